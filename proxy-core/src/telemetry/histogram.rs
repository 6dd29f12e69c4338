//! Single-writer counters and fixed-bucket histograms, read by another thread.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// Most buckets a histogram has, the one above every bound included.
pub const MAX_BUCKETS: usize = 16;

/// A counter written by one thread only (its worker) and read by any.
///
/// An increment is a relaxed load and a relaxed store: plain moves on x86 and ARM, no locked
/// read-modify-write and no cache line bouncing between workers. Readers may see a value a few
/// increments old, never a torn one.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call it (two writers would lose increments).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Takes `n` (a gauge). Owning worker only.
    #[inline]
    pub(crate) fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// The bucket bounds of a histogram, in an integer unit.
#[derive(Debug)]
pub struct Scale {
    /// Inclusive upper bounds (Prometheus `le`), ascending, at most [`MAX_BUCKETS`]` - 1`.
    pub bounds: &'static [u64],
    /// Units per second (1e9 for nanoseconds).
    pub per_second: u64,
}

impl Scale {
    /// Bucket of `value`: the first bound not below it, or the last bucket (`+Inf`).
    #[inline]
    fn bucket(&self, value: u64) -> usize {
        self.bounds.partition_point(|&b| b < value)
    }

    /// `units` in seconds.
    pub fn seconds(&self, units: u64) -> f64 {
        units as f64 / self.per_second as f64
    }
}

/// Backend connect latency: 100 µs to 5 s (the default connect timeout), 1-2.5-5 steps, in ns.
pub static CONNECT_SCALE: Scale = Scale {
    bounds: &[
        100_000,
        250_000,
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_500_000_000,
        5_000_000_000,
    ],
    per_second: 1_000_000_000,
};

/// Connection duration: 1 ms to 1 h, in µs (a sum in µs lasts 584,000 connection-years).
pub static DURATION_SCALE: Scale = Scale {
    bounds: &[
        1_000,
        5_000,
        10_000,
        50_000,
        100_000,
        500_000,
        1_000_000,
        5_000_000,
        10_000_000,
        30_000_000,
        60_000_000,
        300_000_000,
        900_000_000,
        3_600_000_000,
    ],
    per_second: 1_000_000,
};

/// A histogram written by one worker: a count per bucket (not cumulative) and the sum.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    counts: [Counter; MAX_BUCKETS],
    sum: Counter,
}

impl Histogram {
    /// Counts `value` (in the unit of `scale`). Owning worker only.
    #[inline]
    pub(crate) fn record(&self, scale: &Scale, value: u64) {
        self.counts[scale.bucket(value)].add(1);
        self.sum.add(value);
    }
}

/// What a histogram held when read, possibly summed over workers.
#[derive(Clone, Copy, Debug)]
pub struct HistogramSnapshot {
    scale: &'static Scale,
    counts: [u64; MAX_BUCKETS],
    sum: u64,
}

impl HistogramSnapshot {
    pub(crate) const fn empty(scale: &'static Scale) -> Self {
        HistogramSnapshot {
            scale,
            counts: [0; MAX_BUCKETS],
            sum: 0,
        }
    }

    pub(crate) fn add(&mut self, h: &Histogram) {
        for (total, c) in self.counts.iter_mut().zip(&h.counts) {
            *total += c.get();
        }
        self.sum += h.sum.get();
    }

    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the observations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.scale.seconds(self.sum)
    }

    /// Cumulative counts per upper bound in seconds, ascending, ending with `+Inf` (whose
    /// count is [`Self::count`]): the `le` series of a Prometheus histogram.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let bounds = self.scale.bounds.iter().map(|&b| self.scale.seconds(b));
        let mut total = 0;
        bounds
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(le, &n)| {
                total += n;
                (le, total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_fit_the_bucket_array_and_ascend() {
        for scale in [&CONNECT_SCALE, &DURATION_SCALE] {
            assert!(scale.bounds.len() < MAX_BUCKETS);
            assert!(scale.bounds.windows(2).all(|w| w[0] < w[1]));
        }
        // Bounds print as the round numbers they are.
        assert_eq!(CONNECT_SCALE.seconds(100_000).to_string(), "0.0001");
        assert_eq!(CONNECT_SCALE.seconds(2_500_000).to_string(), "0.0025");
        assert_eq!(DURATION_SCALE.seconds(3_600_000_000).to_string(), "3600");
    }

    #[test]
    fn a_value_on_a_bound_counts_in_that_bucket_and_above_every_bound_in_inf() {
        let h = Histogram::default();
        for v in [
            0,
            100_000,
            100_001,
            250_000,
            5_000_000_000,
            5_000_000_001,
            u64::MAX / 2,
        ] {
            h.record(&CONNECT_SCALE, v);
        }
        let mut snap = HistogramSnapshot::empty(&CONNECT_SCALE);
        snap.add(&h);
        let cumulative = snap.cumulative();
        assert_eq!(cumulative.len(), CONNECT_SCALE.bounds.len() + 1);
        assert_eq!(cumulative[0], (0.0001, 2), "0 and 100 µs are <= 100 µs");
        assert_eq!(cumulative[1], (0.00025, 4));
        assert_eq!(cumulative[14], (5.0, 5));
        assert_eq!(cumulative[15], (f64::INFINITY, 7));
        assert_eq!(snap.count(), 7);
        assert!(cumulative.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn snapshots_add_up_workers() {
        let (a, b) = (Histogram::default(), Histogram::default());
        a.record(&DURATION_SCALE, 2_000);
        b.record(&DURATION_SCALE, 3_000);
        b.record(&DURATION_SCALE, 7_200_000_000);
        let mut snap = HistogramSnapshot::empty(&DURATION_SCALE);
        snap.add(&a);
        snap.add(&b);
        assert_eq!(snap.count(), 3);
        assert_eq!(snap.sum_seconds(), 7_200.005);
        assert_eq!(snap.cumulative()[1], (0.005, 2));
    }
}
