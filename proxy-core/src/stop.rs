//! How a frontend's reading task stops: a flag the task checks, and a wait it can race with
//! its readiness wait.
//!
//! A frontend's socket may be shared with a successor process (a handover): the same socket
//! object, received from the master. Then the task must stop without touching the socket (a
//! `shutdown(2)` would stop the successor too) and without cancelling its pending readiness
//! wait through io_uring's `AsyncCancel` (monoio keys cancellation by slot index, so a late
//! cancel can hit a newer operation that reused the slot). It therefore leaves the pending wait
//! to the runtime's end ([`abandon`]): a readiness wait consumes nothing from the socket, so
//! every connection or datagram it leaves is the successor's to take.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::task::{Poll, Waker};

/// A stop request for one task of this worker (single-threaded: plain cells).
#[derive(Default)]
pub(crate) struct Stop {
    /// Stop without touching the socket, waking the task's [`Stop::wait`].
    stopped: Cell<bool>,
    /// The socket is being shut down, which wakes the task's readiness wait itself (so the
    /// wait ends normally and nothing is abandoned).
    closed: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stop")
            .field("stopped", &self.stopped.get())
            .field("closed", &self.closed.get())
            .finish()
    }
}

impl Stop {
    /// Asks the task to stop without touching its socket (a successor shares it), and wakes
    /// it.
    pub(crate) fn stop(&self) {
        self.stopped.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Marks the task's socket as being shut down: the caller's `shutdown(2)` wakes the
    /// task's readiness wait, and the task then sees [`Stop::is_stopped`].
    pub(crate) fn close(&self) {
        self.closed.set(true);
    }

    /// Whether the task is to stop, either way.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.get() || self.closed.get()
    }

    /// Resolves once a stop is asked for.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads the flag.
    pub(crate) async fn wait(&self) {
        poll_fn(|cx| {
            if self.stopped.get() {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// A gate a worker's tasks wait at until it opens (UDP frontends of a successor process wait
/// for the flows its predecessor hands over before they read their first datagram).
#[derive(Default)]
pub(crate) struct Gate {
    open: Cell<bool>,
    waiters: std::cell::RefCell<Vec<Waker>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("open", &self.open.get())
            .finish()
    }
}

impl Gate {
    /// A gate that is open (`true`) or closed from the start.
    pub(crate) fn new(open: bool) -> Gate {
        Gate {
            open: Cell::new(open),
            waiters: std::cell::RefCell::default(),
        }
    }

    /// Opens the gate and wakes every waiter.
    pub(crate) fn open(&self) {
        self.open.set(true);
        for w in self.waiters.take() {
            w.wake();
        }
    }

    /// Resolves once the gate is open.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads the state.
    pub(crate) async fn opened(&self) {
        poll_fn(|cx| {
            if self.open.get() {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Waits for `ready` or for `stop`, whichever comes first: `Some` with `ready`'s output, or
/// `None` after a stop, in which case the still-pending `ready` is abandoned (see the module
/// docs) rather than cancelled.
pub(crate) async fn ready_or_stop<F: Future>(ready: F, stop: &Stop) -> Option<F::Output> {
    let ready = Box::pin(ready);
    let stopped = Box::pin(stop.wait());
    match futures_util::future::select(ready, stopped).await {
        futures_util::future::Either::Left((out, _)) => Some(out),
        futures_util::future::Either::Right(((), pending)) => {
            abandon(pending);
            None
        }
    }
}

/// Leaves a pending operation's future to the end of the runtime: it is never dropped, so no
/// cancellation is submitted for it. Its memory (a few hundred bytes) is freed with the
/// process; this happens once per frontend a worker stops reading.
fn abandon<F>(pending: F) {
    std::mem::forget(pending);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_stop_wakes_the_waiter_and_abandons_what_it_raced() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let stop = Rc::new(Stop::default());
            let s = Rc::clone(&stop);
            let waiter =
                monoio::spawn(async move { ready_or_stop(std::future::pending::<()>(), &s).await });
            monoio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert!(!stop.is_stopped());
            stop.stop();
            assert_eq!(waiter.await, None, "stopped, the pending wait abandoned");
            // Something ready wins.
            let again = Stop::default();
            assert_eq!(ready_or_stop(async { 7 }, &again).await, Some(7));
        });
    }
}
