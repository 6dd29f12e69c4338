//! What a load measured, per client thread while it runs ([`Recorder`]) and merged into the
//! [`Report`] users read: latency percentiles in microseconds from an HdrHistogram (three
//! significant digits, up to a minute), throughput, errors by kind.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

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
    /// `rr`, `cps` or `udp`.
    pub scenario: String,
    /// `open` (a fixed rate) or `closed`.
    pub mode: String,
    /// Requests a second asked for (open loop only).
    pub rate: Option<f64>,
    pub connections: usize,
    pub threads: usize,
    /// The measured window (after the warm-up).
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Requests answered within the window.
    pub requests: u64,
    /// Requests answered per second of the window.
    pub throughput_rps: f64,
    pub errors: ErrorCounts,
    pub latency_us: Latency,
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
}
