//! A sleep that an earlier deadline can cut short: the wake-up of a worker's timer sweepers
//! (TCP idle timers, UDP flow expiry).

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use monoio::time::Instant;

/// When a sweeper plans to wake, and a way to wake it sooner.
#[derive(Default)]
pub(crate) struct Alarm {
    /// When the sweeper plans to wake next (`None`: it waits for [`Self::wake_if_before`]).
    planned: Cell<Option<Instant>>,
    notified: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Alarm {
    /// Wakes the sweeper when `deadline` comes before its planned wake-up.
    pub(crate) fn wake_if_before(&self, deadline: Instant) {
        if self.planned.get().is_none_or(|p| deadline < p) {
            self.notified.set(true);
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    /// Sleeps until `next` (forever with `None`) or until [`Self::wake_if_before`] files an
    /// earlier deadline.
    ///
    /// # Cancel safety
    /// Dropping it only loses the wait.
    pub(crate) async fn sleep_until(&self, next: Option<Instant>) {
        self.planned.set(next);
        match next {
            Some(deadline) => {
                monoio::select! {
                    () = monoio::time::sleep_until(deadline) => {}
                    () = self.notified() => {}
                }
            }
            None => self.notified().await,
        }
    }

    async fn notified(&self) {
        poll_fn(|cx| {
            if self.notified.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
    }
}
