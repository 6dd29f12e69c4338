//! The time a load runs: when it starts, when counting starts (after the warm-up), and the
//! rate steps after that, each as long as the load's duration.

use std::time::Duration;

use tokio::time::Instant;

/// When the load starts, counts, and ends; and the rate of each step.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    pub(crate) start: Instant,
    pub(crate) counted: Instant,
    pub(crate) step: Duration,
    pub(crate) rates: Vec<Option<f64>>,
}

impl Window {
    pub(crate) fn end(&self) -> Instant {
        self.counted + self.step * self.rates.len() as u32
    }

    /// The warm-up and then each step: when each starts and ends, at which rate, and which
    /// step it counts in (`None`: the warm-up).
    pub(crate) fn segments(&self) -> Vec<(Instant, Instant, Option<f64>, Option<usize>)> {
        let first = self.rates.first().copied().flatten();
        let mut segments = vec![(self.start, self.counted, first, None)];
        for (i, &rate) in self.rates.iter().enumerate() {
            let from = self.counted + self.step * i as u32;
            segments.push((from, from + self.step, rate, Some(i)));
        }
        segments
    }
}
