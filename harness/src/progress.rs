//! The live progress line of a load (indicatif, on stderr, only when stderr is a terminal):
//! the phase (warm-up, or which rate step), the time left, requests answered so far, the
//! throughput of the last moment and the errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::load::Load;
use crate::window::Window;

/// How often the line is redrawn.
const TICK: Duration = Duration::from_millis(250);

/// What the client threads have done so far (warm-up included).
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) answered: AtomicU64,
    pub(crate) failed: AtomicU64,
}

impl Counters {
    /// A request ended, answered or not.
    pub(crate) fn ended(&self, answered: bool) {
        let counter = if answered {
            &self.answered
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The line, and the thread that redraws it.
pub(crate) struct Line {
    counters: Arc<Counters>,
    stop: Option<mpsc::Sender<()>>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Line {
    /// Starts drawing the progress of `load` over `window`, if the load asks for it and
    /// stderr is a terminal.
    pub(crate) fn start(load: &Load, window: &Window) -> Line {
        let counters = Arc::new(Counters::default());
        let mut line = Line {
            counters: Arc::clone(&counters),
            stop: None,
            ticker: None,
        };
        let target = ProgressDrawTarget::stderr();
        if !load.progress || target.is_hidden() {
            return line;
        }
        let total = window.end().into_std();
        let begin = window.start.into_std();
        let bar = ProgressBar::with_draw_target(
            Some(millis(total.saturating_duration_since(begin))),
            target,
        );
        bar.set_style(
            ProgressStyle::with_template("{bar:24} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let (tx, rx) = mpsc::channel::<()>();
        let phases = Phases::of(window);
        let ticker = std::thread::Builder::new()
            .name("bench-progress".into())
            .spawn(move || {
                let mut last = (Instant::now(), 0u64);
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(TICK) {
                    let now = Instant::now();
                    let answered = counters.answered.load(Ordering::Relaxed);
                    let failed = counters.failed.load(Ordering::Relaxed);
                    let rate = (answered - last.1) as f64 / (now - last.0).as_secs_f64();
                    last = (now, answered);
                    bar.set_position(millis(now.saturating_duration_since(begin)));
                    let left = total.saturating_duration_since(now).as_secs();
                    bar.set_message(format!(
                        "{}  {left}s left  {answered} answered  {rate:.0}/s  {failed} errors",
                        phases.at(now)
                    ));
                }
                bar.finish_and_clear();
            })
            .ok();
        line.stop = ticker.as_ref().map(|_| tx);
        line.ticker = ticker;
        line
    }

    /// The counters the client threads add to.
    pub(crate) fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Clears the line.
    pub(crate) fn finish(mut self) {
        drop(self.stop.take());
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// When each phase of a window starts, and its name.
struct Phases(Vec<(Instant, String)>);

impl Phases {
    fn of(window: &Window) -> Phases {
        let steps = window.segments().len() - 1;
        Phases(
            window
                .segments()
                .into_iter()
                .map(|(from, _, rate, step)| {
                    let pace = rate.map_or_else(|| "closed loop".to_owned(), |r| format!("{r}/s"));
                    let name = match step {
                        None => format!("warm-up, {pace}"),
                        Some(i) if steps > 1 => format!("step {}/{steps}, {pace}", i + 1),
                        Some(_) => format!("measuring, {pace}"),
                    };
                    (from.into_std(), name)
                })
                .collect(),
        )
    }

    fn at(&self, now: Instant) -> &str {
        self.0
            .iter()
            .rev()
            .find(|(from, _)| *from <= now)
            .or(self.0.first())
            .map_or("", |(_, name)| name.as_str())
    }
}
