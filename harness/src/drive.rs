//! [`run`]: a load driven from its client threads, and what they measured merged into its
//! [`Report`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::load::{Load, LoadError, Mode, Scenario};
use crate::stats::{Recorder, Report, StepReport, Timeline};
use crate::window::Window;

/// Runs `load` and reports what it measured. Blocks for the warm-up and the duration (and
/// at most one request timeout more).
pub fn run(load: &Load) -> Result<Report, LoadError> {
    if load.connections == 0 || load.threads == 0 {
        return Err(LoadError::Empty);
    }
    if let Mode::Open { rates } = &load.mode {
        if load.scenario == Scenario::Bulk {
            return Err(LoadError::PacedBulk);
        }
        match rates.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
            Some(&bad) => return Err(LoadError::Rate(bad)),
            None if rates.is_empty() => return Err(LoadError::Rate(0.0)),
            None => {}
        }
    }
    // Every thread starts on the same timetable, a moment from now.
    let soon = Instant::now() + Duration::from_millis(50);
    let start = load
        .start
        .map_or(soon, |at| Instant::from_std(at).max(soon));
    let window = Window {
        start,
        counted: start + load.warmup,
        step: load.duration,
        rates: load.mode.steps(),
    };
    let progress = crate::progress::Line::start(load, &window);
    let load = Arc::new(load.clone());
    let threads: Vec<_> = (0..load.threads)
        .map(|t| {
            let load = Arc::clone(&load);
            let window = window.clone();
            let counters = progress.counters();
            std::thread::Builder::new()
                .name(format!("bench-client-{t}"))
                .spawn(move || crate::client::thread(&load, t, &window, &counters))
                .map_err(LoadError::Thread)
        })
        .collect::<Result<_, _>>()?;
    let mut total = crate::client::Measured::new(&window);
    for thread in threads {
        if let Ok(measured) = thread.join() {
            total.merge(&measured);
        }
    }
    let counters = progress.counters();
    let ended = counters.answered.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed);
    progress.finish();
    let mut report = report(&load, &window, &total);
    report.client_cpu_us_per_request = if ended > 0 {
        total.cpu.as_secs_f64() * 1e6 / ended as f64
    } else {
        0.0
    };
    Ok(report)
}

fn report(load: &Load, window: &Window, total: &crate::client::Measured) -> Report {
    let step_secs = load.duration.as_secs_f64();
    let per_second = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let steps: Vec<StepReport> = window
        .rates
        .iter()
        .zip(&total.steps)
        .enumerate()
        .map(|(i, (&rate, r))| StepReport {
            rate,
            start_s: step_secs * i as f64,
            duration_s: step_secs,
            requests: r.answered_count(),
            throughput_rps: per_second(r.answered_count(), step_secs),
            bytes: r.answered_count() * load.scenario.bytes_per_request(),
            errors: r.errors(),
            latency_us: r.latency(),
        })
        .collect();
    let mut all = Recorder::default();
    for r in &total.steps {
        all.merge(r);
    }
    let secs = load.measured().as_secs_f64();
    let requests = all.answered_count();
    let bytes = requests * load.scenario.bytes_per_request();
    Report {
        target: load.target.to_string(),
        scenario: load.scenario.name().to_owned(),
        mode: match load.mode {
            Mode::Open { .. } => "open".to_owned(),
            Mode::Closed => "closed".to_owned(),
        },
        rate: window.rates.first().copied().flatten(),
        connections: load.connections,
        threads: load.threads,
        duration_s: secs,
        warmup_s: load.warmup.as_secs_f64(),
        requests,
        throughput_rps: per_second(requests, secs),
        bytes,
        throughput_gbps: per_second(bytes * 8, secs) / 1e9,
        errors: all.errors(),
        latency_us: all.latency(),
        steps,
        timeline: Timeline::from(&total.timeline),
        client_cpu_us_per_request: 0.0,
    }
}
