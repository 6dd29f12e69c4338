//! In-process tests of the TCP data plane: the relay, connect with retry, and (in `accept.rs`,
//! a child of `worker.rs` for the worker's private items) the accept loop. Every test runs
//! under both I/O drivers a worker can have, built the way workers build them, against the
//! scripted backends of [`backend`] on loopback port 0.
//!
//! Test code only (`cfg(test)`). Peers are plain blocking sockets on their own threads; the
//! code under test runs on the test thread's monoio runtime and waits for them through
//! channels, never through sleeps.

pub(crate) mod backend;
mod connect;
mod relay;
// `accept.rs` is declared by `worker.rs`, whose private items it tests.

use std::future::Future;
use std::time::Duration;

use crate::driver::{self, IoDriver, IoDriverKind};

/// How long anything in a test may take before the test fails instead of hanging.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Relay buffer size in these tests: small, so a transfer takes many full buffers.
pub(crate) const BUFFER: usize = 16 * 1024;

/// Runs `test` on a fresh runtime of each driver, as [`driver::build`] makes it for a worker:
/// epoll, then io_uring with the ring flags workers ask for. A machine without io_uring fails
/// the test, as the end-to-end suites do: a test that skipped a driver would prove nothing of it.
pub(crate) fn on_each_driver<F, Fut>(test: F)
where
    F: Fn(IoDriverKind) -> Fut,
    Fut: Future<Output = ()>,
{
    for asked in [IoDriver::Epoll, IoDriver::Uring] {
        let (mut rt, kind) = driver::build(asked, false)
            .unwrap_or_else(|e| panic!("cannot build the {asked:?} runtime: {e}"));
        rt.block_on(test(kind));
    }
}

/// `fut`, or a failure naming `what` after [`PATIENCE`].
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    monoio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {PATIENCE:?}"))
}

/// Waits until `done()` holds, checking every few milliseconds, for state that announces no
/// event (a counter, a pool); fails naming `what` after [`PATIENCE`].
pub(crate) async fn until(what: &str, done: impl Fn() -> bool) {
    within(what, async {
        while !done() {
            monoio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// The result of work on a thread of its own, awaited without blocking the runtime.
pub(crate) struct Pending<T>(flume::Receiver<std::thread::Result<T>>);

impl<T: Send + 'static> Pending<T> {
    /// What the thread returned; its panic is resumed here, so its assertions fail the test.
    pub(crate) async fn wait(self) -> T {
        let result = within("a peer thread", self.0.recv_async())
            .await
            .expect("the peer thread reports once");
        result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Runs `f` (a blocking peer: client or backend) on a thread of its own.
pub(crate) fn off_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Pending<T> {
    let (tx, rx) = flume::bounded(1);
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(result);
    });
    Pending(rx)
}

/// A one-shot signal from a peer thread to the test (`Pending` of nothing).
pub(crate) fn signal() -> (flume::Sender<()>, flume::Receiver<()>) {
    flume::bounded(1)
}

/// Waits for a [`signal`] named `what`.
pub(crate) async fn wait_for(what: &str, rx: &flume::Receiver<()>) {
    within(what, rx.recv_async())
        .await
        .unwrap_or_else(|_| panic!("{what}: the peer thread ended without it"));
}
