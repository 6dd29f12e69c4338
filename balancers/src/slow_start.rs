//! Slow start, as HAProxy's `slowstart`: a backend that comes back into service (marked up
//! by its health checks, readmitted after an ejection, or added to a service that is already
//! serving) does not take its full share at once; its weight ramps from almost nothing to
//! its configured weight over the service's slow-start time, so a cold cache or a JIT that is
//! still warming up is not flooded.
//!
//! Schedulers are built with fixed weights, so a ramp is a series of rebuilds with the
//! weights [`SlowStart::weights`] gives at each moment (the control plane republishes the
//! service when they change). A ramp moves in [`STEPS`] steps. While any backend of a service
//! ramps, every weight is multiplied by up to [`SCALE`] so that a backend of weight 1 can
//! start at a sixteenth of its share (HAProxy's `BE_WEIGHT_SCALE`); the ratios between the
//! other backends stay the same, so their shares do not move.
//!
//! It applies to the schedulers that weigh backends: `wrr`, `wlc`, `sed` and `nq`. `rr` and
//! `lc` only switch a backend on or off by its weight, and moving the weights of `sh`, `dh`
//! or `mh` would move clients between backends.

use std::sync::Arc;
use std::time::Duration;

use crate::{BackendSpec, BackendState, SchedulerKind, MAX_WEIGHT, MAX_WRR_CYCLE};

/// Steps of one ramp: the weights change at most this many times.
pub const STEPS: u64 = 20;
/// How much finer than the configured weights a ramp may go.
pub const SCALE: u32 = 16;

/// A service's slow-start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowStart {
    ms: u64,
}

impl SlowStart {
    /// A ramp over `time` (at least a millisecond).
    pub fn new(time: Duration) -> SlowStart {
        SlowStart {
            ms: u64::try_from(time.as_millis()).unwrap_or(u64::MAX).max(1),
        }
    }

    /// Whether slow start can ramp the weights of `kind`'s backends.
    pub fn applies_to(kind: SchedulerKind) -> bool {
        matches!(
            kind,
            SchedulerKind::Wrr | SchedulerKind::Wlc | SchedulerKind::Sed | SchedulerKind::Nq
        )
    }

    /// The share of its weight a backend that came back at `back` has at `now`, in
    /// `0..STEPS` steps; `None` when it is not ramping (never came back, or its ramp is over).
    pub fn step(&self, back: Option<u64>, now: u64) -> Option<u64> {
        let elapsed = now.saturating_sub(back?);
        (elapsed < self.ms).then(|| {
            let step = u128::from(elapsed) * u128::from(STEPS) / u128::from(self.ms);
            u64::try_from(step).unwrap_or(STEPS - 1)
        })
    }

    /// The weights to build `kind`'s scheduler for `specs` with at `now`, given each
    /// backend's state; `None` when no backend is ramping (the configured weights hold).
    pub fn weights(
        &self,
        kind: SchedulerKind,
        specs: &[BackendSpec],
        states: &[Arc<BackendState>],
        now: u64,
    ) -> Option<Vec<BackendSpec>> {
        if !Self::applies_to(kind) {
            return None;
        }
        let steps: Vec<Option<u64>> = states
            .iter()
            .map(|s| self.step(s.back_since(), now))
            .collect();
        if steps.iter().all(Option::is_none) {
            return None;
        }
        let scale = scale(kind, specs);
        let ramped = specs
            .iter()
            .zip(steps)
            .map(|(spec, step)| {
                let full = spec.weight * scale;
                let weight = match step {
                    Some(k) if full > 0 => {
                        let part = (u64::from(full) * k).div_ceil(STEPS);
                        u32::try_from(part).unwrap_or(full).max(1)
                    }
                    _ => full,
                };
                BackendSpec {
                    weight,
                    last_weight: weight.max(spec.last_weight),
                    ..*spec
                }
            })
            .collect();
        Some(ramped)
    }
}

/// The factor weights are multiplied by during a ramp: [`SCALE`], or less when the weights
/// would go past [`MAX_WEIGHT`] or, for `wrr`, the cycle past [`MAX_WRR_CYCLE`].
fn scale(kind: SchedulerKind, specs: &[BackendSpec]) -> u32 {
    let max = specs.iter().map(|s| s.weight).max().unwrap_or(0).max(1);
    let mut scale = SCALE.min(MAX_WEIGHT / max);
    if kind == SchedulerKind::Wrr {
        let sum: u64 = specs.iter().map(|s| u64::from(s.weight)).sum();
        let room = (MAX_WRR_CYCLE as u64) / sum.max(1);
        scale = scale.min(u32::try_from(room).unwrap_or(u32::MAX));
    }
    scale.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(n: usize) -> Vec<Arc<BackendState>> {
        (0..n).map(|_| Arc::new(BackendState::default())).collect()
    }

    fn weights(specs: &[BackendSpec]) -> Vec<u32> {
        specs.iter().map(|s| s.weight).collect()
    }

    #[test]
    fn a_backend_that_came_back_ramps_in_steps_to_its_full_weight() {
        let slow = SlowStart::new(Duration::from_millis(2_000));
        let specs = [BackendSpec::new(1), BackendSpec::new(1)];
        let st = states(2);
        assert_eq!(slow.weights(SchedulerKind::Wrr, &specs, &st, 5_000), None);
        st[1].came_back(1_000);
        let at = |now| weights(&slow.weights(SchedulerKind::Wrr, &specs, &st, now).unwrap());
        assert_eq!(at(1_000), [16, 1], "a sixteenth of its share at first");
        assert_eq!(at(1_100), [16, 1], "step 1 of 20: ceil(16 / 20)");
        assert_eq!(at(2_000), [16, 8], "half way");
        assert_eq!(at(2_999), [16, 16], "step 19: ceil(16 * 19 / 20)");
        assert_eq!(slow.weights(SchedulerKind::Wrr, &specs, &st, 3_000), None);
        assert_eq!(slow.step(st[1].back_since(), 2_000), Some(10));
    }

    #[test]
    fn only_weighing_schedulers_ramp_and_quiesced_backends_stay_off() {
        let slow = SlowStart::new(Duration::from_secs(1));
        let specs = [BackendSpec::new(3), BackendSpec::new(3).quiesced()];
        let st = states(2);
        st[0].came_back(0);
        st[1].came_back(0);
        for kind in SchedulerKind::ALL.iter().copied() {
            let got = slow.weights(kind, &specs, &st, 500);
            assert_eq!(got.is_some(), SlowStart::applies_to(kind), "{kind}");
            if let Some(got) = got {
                assert_eq!(weights(&got), [24, 0], "{kind}: half of 3 x 16, and off");
            }
        }
    }

    #[test]
    fn the_scale_keeps_weights_and_the_wrr_cycle_within_bounds() {
        let slow = SlowStart::new(Duration::from_secs(1));
        let specs = [BackendSpec::new(MAX_WEIGHT), BackendSpec::new(1)];
        let st = states(2);
        st[1].came_back(0);
        let got = slow.weights(SchedulerKind::Wlc, &specs, &st, 0).unwrap();
        assert_eq!(weights(&got), [MAX_WEIGHT, 1], "no room to scale");
        let many = vec![BackendSpec::new(100); 10_000];
        let st = states(10_000);
        st[0].came_back(0);
        let got = slow.weights(SchedulerKind::Wrr, &many, &st, 0).unwrap();
        let cycle: u64 = got.iter().map(|s| u64::from(s.weight)).sum();
        assert!(cycle <= MAX_WRR_CYCLE as u64, "{cycle}");
        assert!(
            crate::Scheduler::build(&crate::SchedulerConfig::new(SchedulerKind::Wrr), &got).is_ok()
        );
    }

    #[test]
    fn marking_up_and_readmitting_start_a_ramp() {
        let s = BackendState::default();
        assert_eq!(s.back_since(), None, "a backend that never left");
        s.set_down(true);
        assert_eq!(s.back_since(), None);
        s.set_down(false);
        assert!(s.back_since().is_some());
        let s = BackendState::default();
        assert!(s.eject(10));
        assert!(s.readmit(10));
        assert_eq!(s.back_since(), Some(10));
    }
}
