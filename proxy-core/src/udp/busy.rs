//! The low-latency mode (`--busy-poll`): a keeper task that keeps a worker's runtime awake
//! for a bounded time after traffic, so datagrams are picked up without a cross-core wake-up.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The resolution of monoio's timers.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// Bounded busy polling (the low-latency mode). Waking a sleeping worker on the other core
/// costs tens of microseconds per datagram; a worker that keeps running picks a datagram up
/// within one pass of its loop. After each datagram a socket task relays, [`BusyPoll::keep`]
/// keeps the worker's runtime from sleeping for `budget`: every pass of the runtime then
/// reaps readiness from the kernel without blocking (one `io_uring_enter`, or `epoll_wait`
/// with a zero timeout, for all sockets at once), so an idle socket costs no system call of
/// its own. The price is a core kept busy while traffic arrives at least once per budget.
pub(crate) struct BusyPoll {
    budget: Duration,
    last: Cell<Instant>,
    /// The keeper's waker while it is parked (the budget passed with no traffic).
    parked: Cell<Option<std::task::Waker>>,
    /// Passes the keeper has made.
    passes: Cell<u64>,
}

impl BusyPoll {
    pub(super) fn new(budget: Duration) -> Self {
        Self {
            budget,
            last: Cell::new(Instant::now()),
            parked: Cell::new(None),
            passes: Cell::new(0),
        }
    }

    /// A socket task relayed datagrams at `now`: the budget starts again.
    pub(super) fn activity(&self, now: Instant) {
        self.last.set(now);
        if let Some(keeper) = self.parked.take() {
            keeper.wake();
        }
    }

    fn idle(&self) -> bool {
        self.last.get().elapsed() >= self.budget
    }

    /// The keeper: runs for the life of the worker, yielding on every pass while traffic is
    /// recent and parking once `budget` passes without any.
    pub(crate) async fn keep(self: Rc<Self>) {
        // A task that wakes itself while running is put at the front of monoio's queue and
        // would starve the socket tasks; a wake from another task goes to the back. So the
        // keeper yields by waking a partner task that wakes it back: one pass of the runtime
        // (and its non-blocking reap) between, and no allocation per pass.
        let partner = Rc::new(Partner::default());
        crate::task::spawn(crate::task::TaskKind::Worker, Rc::clone(&partner).serve());
        let mut timers_run = Instant::now();
        loop {
            let passes = self.passes.get() + 1;
            self.passes.set(passes);
            // The clock is read every few passes: a pass takes about a microsecond.
            if !passes.is_multiple_of(16) {
                partner.bounce().await;
                continue;
            }
            if self.idle() {
                std::future::poll_fn(|cx| {
                    if self.idle() {
                        self.parked.set(Some(cx.waker().clone()));
                        std::task::Poll::Pending
                    } else {
                        std::task::Poll::Ready(())
                    }
                })
                .await;
            }
            let now = Instant::now();
            if now.duration_since(timers_run) < TIMER_TICK {
                partner.bounce().await;
                continue;
            }
            // monoio fires timers only when its queue runs empty and it parks, which a
            // spinning keeper prevents: once per timer tick, wait on a timer that is
            // already due, so the runtime parks without blocking and fires every due timer
            // (idle timeouts, the flow sweeper).
            timers_run = now;
            let due = monoio::time::Instant::from_std(now.checked_sub(TIMER_TICK).unwrap_or(now));
            monoio::time::sleep_until(due).await;
        }
    }
}

/// The keeper's partner: wakes the keeper each time the keeper wakes it.
#[derive(Default)]
struct Partner {
    /// The partner's waker, while it waits to be asked.
    idle: Cell<Option<std::task::Waker>>,
    /// The keeper's waker, while it waits to be woken back.
    keeper: Cell<Option<std::task::Waker>>,
}

impl Partner {
    /// The keeper's side: asks the partner for a wake and waits for it.
    async fn bounce(&self) {
        let mut asked = false;
        std::future::poll_fn(|cx| {
            if asked {
                return std::task::Poll::Ready(());
            }
            asked = true;
            self.keeper.set(Some(cx.waker().clone()));
            if let Some(partner) = self.idle.take() {
                partner.wake();
            }
            std::task::Poll::Pending
        })
        .await;
    }

    /// The partner's side, for the life of the keeper.
    async fn serve(self: Rc<Self>) {
        std::future::poll_fn(|cx| {
            if let Some(keeper) = self.keeper.take() {
                keeper.wake();
            }
            self.idle.set(Some(cx.waker().clone()));
            std::task::Poll::<()>::Pending
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `done` between runtime passes until it holds, for at most five seconds.
    async fn until(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            monoio::time::sleep(Duration::from_micros(200)).await;
        }
        done()
    }

    fn parked(busy: &BusyPoll) -> bool {
        let waker = busy.parked.take();
        let parked = waker.is_some();
        busy.parked.set(waker);
        parked
    }

    #[test]
    fn the_keeper_spins_after_traffic_and_parks_when_idle() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let busy = Rc::new(BusyPoll::new(Duration::from_millis(200)));
            monoio::spawn(Rc::clone(&busy).keep());
            for round in 0..2 {
                busy.activity(Instant::now());
                let before = busy.passes.get();
                // Hot: the keeper makes passes while other tasks (this one) still run.
                assert!(
                    until(|| busy.passes.get() > before + 32).await,
                    "round {round}: the keeper did not spin"
                );
                assert!(!parked(&busy), "round {round}: parked within the budget");
                // Timers still fire while it spins (the sleeps in `until` are timers too).
                let fired = Rc::new(Cell::new(false));
                let flag = Rc::clone(&fired);
                monoio::spawn(async move {
                    monoio::time::sleep(Duration::from_millis(1)).await;
                    flag.set(true);
                });
                busy.activity(Instant::now());
                assert!(until(|| fired.get()).await, "round {round}: timer starved");
                assert!(!parked(&busy), "round {round}: parked within the budget");
                // Idle for longer than the budget: it parks and stops making passes.
                assert!(until(|| parked(&busy)).await, "round {round}: never parked");
                let still = busy.passes.get();
                monoio::time::sleep(Duration::from_millis(5)).await;
                assert_eq!(busy.passes.get(), still, "round {round}: spun while parked");
            }
        });
    }
}
