//! The relay between a real client and a scripted backend: exact bytes and counts both ways,
//! half-close forwarded in each direction, a reset passed on, the idle timeout's FIN, a drain
//! deadline's and a shutdown's reset, and relay buffers back in the pool afterwards.

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use balancers::BackendState;
use monoio::net::{TcpListener, TcpStream};

use super::backend::{
    self, connect, payload, read_to_end, round_trip, send_then_read, Backend, End, SPOKEN,
};
use super::{off_thread, on_each_driver, signal, until, wait_for, within, BUFFER};
use crate::idle::IdleTimers;
use crate::pool::BufferPool;
use crate::relay::{relay, PeerPair, RelayEnd, RelayOutcome};

/// Buffers put in the pool before a relay: it never needs more at once (one per direction),
/// so the pool holds exactly these again after it, or a buffer was lost.
const PREFILLED: usize = 2;

/// No idle timeout within a test.
const NEVER: Duration = Duration::from_secs(3600);

/// A front listener, the worker's pool and timers (their sweeper running), and the backend's
/// load state, on the test's runtime.
struct Rig {
    front: TcpListener,
    pool: BufferPool,
    timers: Rc<IdleTimers<PeerPair>>,
    state: Arc<BackendState>,
}

impl Rig {
    fn new() -> Rc<Rig> {
        let pool = BufferPool::new(BUFFER, 64);
        let taken: Vec<_> = (0..PREFILLED).map(|_| pool.take()).collect();
        taken.into_iter().for_each(|b| pool.put(b));
        let timers = Rc::new(IdleTimers::new());
        let sweeper = Rc::clone(&timers);
        monoio::spawn(async move { sweeper.run().await });
        Rc::new(Rig {
            front: TcpListener::bind("127.0.0.1:0").expect("front listener"),
            pool,
            timers,
            state: Arc::new(BackendState::new(None)),
        })
    }

    fn front(&self) -> SocketAddr {
        self.front.local_addr().unwrap()
    }

    /// Accepts the next client, connects to `backend` and relays them with `idle`, on a task
    /// of its own.
    fn spawn(
        self: &Rc<Self>,
        backend: SocketAddr,
        idle: Duration,
    ) -> monoio::task::JoinHandle<RelayOutcome> {
        let rig = Rc::clone(self);
        monoio::spawn(async move {
            let (client, _) = rig.front.accept().await.expect("accept the client");
            let server = TcpStream::connect(backend)
                .await
                .expect("connect the backend");
            let guard = rig.state.connect();
            relay(client, server, guard, idle, &rig.pool, &rig.timers).await
        })
    }

    /// After a relay: its buffers are back in the pool, its timer and its count released.
    async fn assert_released(&self) {
        until("the relay's buffers back in the pool", || {
            self.pool.free() == PREFILLED
        })
        .await;
        assert_eq!(self.timers.len(), 0, "the timers forgot the connection");
        assert_eq!(
            (self.state.active(), self.state.inactive()),
            (0, 0),
            "the backend's count released"
        );
    }
}

#[test]
fn bytes_cross_both_ways_exactly_and_are_counted() {
    on_each_driver(|kind| async move {
        let backend = Backend::echo();
        let rig = Rig::new();
        let relayed = rig.spawn(backend.addr, NEVER);
        // More than many buffers, and not a multiple of one.
        let sent = payload(40 * BUFFER + 123, 1);
        let client = off_thread({
            let (front, sent) = (rig.front(), sent.clone());
            move || {
                let mut s = connect(front);
                let mut writer = s.try_clone().unwrap();
                // Written from a thread of its own while this one reads: the echo comes back
                // while the rest is still being sent.
                let writing = std::thread::spawn(move || {
                    writer.write_all(&sent).unwrap();
                    writer.shutdown(Shutdown::Write).unwrap();
                });
                let seen = read_to_end(&mut s);
                writing.join().unwrap();
                seen
            }
        });
        let got = client.wait().await;
        assert_eq!(got.end, End::Eof, "{kind}");
        assert!(
            got.bytes == sent,
            "{kind}: the echo differs from what was sent"
        );
        let outcome = within("the relay", relayed).await;
        let n = sent.len() as u64;
        assert_eq!(
            outcome,
            RelayOutcome {
                to_backend: n,
                to_client: n,
                end: RelayEnd::Closed
            },
            "{kind}"
        );
        let at_backend = backend.seen().await;
        assert_eq!(
            (at_backend.bytes.len(), at_backend.end),
            (sent.len(), End::Eof)
        );
        rig.assert_released().await;
    });
}

#[test]
fn a_client_half_close_keeps_the_backend_answering() {
    on_each_driver(|kind| async move {
        let backend = Backend::answers_after_eof();
        let rig = Rig::new();
        let relayed = rig.spawn(backend.addr, NEVER);
        let asked = payload(3 * BUFFER + 7, 3);
        let client = off_thread({
            let (front, asked) = (rig.front(), asked.clone());
            move || send_then_read(&mut connect(front), &asked)
        });
        let answer = client.wait().await;
        assert_eq!(answer.end, End::Eof, "{kind}");
        assert!(
            answer.bytes == payload(SPOKEN, 2),
            "{kind}: the answer after the FIN"
        );
        let at_backend = backend.seen().await;
        assert_eq!(
            at_backend.end,
            End::Eof,
            "{kind}: the client's FIN forwarded"
        );
        assert!(at_backend.bytes == asked, "{kind}");
        let outcome = within("the relay", relayed).await;
        assert_eq!(
            (outcome.to_backend, outcome.to_client, outcome.end),
            (asked.len() as u64, SPOKEN as u64, RelayEnd::Closed),
            "{kind}"
        );
        rig.assert_released().await;
    });
}

#[test]
fn a_backend_half_close_keeps_the_client_sending() {
    on_each_driver(|kind| async move {
        let backend = Backend::speaks_then_half_closes();
        let rig = Rig::new();
        let relayed = rig.spawn(backend.addr, NEVER);
        let after = payload(2 * BUFFER + 5, 4);
        let client = off_thread({
            let (front, after) = (rig.front(), after.clone());
            move || {
                let mut s = connect(front);
                // All of the backend's bytes and its FIN first, then the client still sends.
                let spoken = read_to_end(&mut s);
                s.write_all(&after).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                spoken
            }
        });
        let spoken = client.wait().await;
        assert_eq!(spoken.end, End::Eof, "{kind}: the backend's FIN forwarded");
        assert!(spoken.bytes == payload(SPOKEN, 2), "{kind}");
        let at_backend = backend.seen().await;
        assert_eq!(at_backend.end, End::Eof, "{kind}");
        assert!(
            at_backend.bytes == after,
            "{kind}: sent after the backend's FIN"
        );
        let outcome = within("the relay", relayed).await;
        assert_eq!(
            (outcome.to_backend, outcome.to_client, outcome.end),
            (after.len() as u64, SPOKEN as u64, RelayEnd::Closed),
            "{kind}"
        );
        rig.assert_released().await;
    });
}

#[test]
fn a_backend_reset_resets_the_client() {
    on_each_driver(|kind| async move {
        let backend = Backend::resets();
        let rig = Rig::new();
        let relayed = rig.spawn(backend.addr, NEVER);
        let client = off_thread({
            let front = rig.front();
            move || send_then_read(&mut connect(front), &[6])
        });
        let seen = client.wait().await;
        assert_eq!(seen.end, End::Reset, "{kind}: {seen:?}");
        assert_eq!(backend.seen().await.bytes, [6], "{kind}");
        let outcome = within("the relay", relayed).await;
        assert_eq!(outcome.end, RelayEnd::Error, "{kind}");
        rig.assert_released().await;
    });
}

#[test]
fn a_client_reset_resets_the_backend() {
    on_each_driver(|kind| async move {
        let backend = Backend::echo();
        let rig = Rig::new();
        let relayed = rig.spawn(backend.addr, NEVER);
        let client = off_thread({
            let front = rig.front();
            move || {
                let mut s = connect(front);
                round_trip(&mut s, 7);
                backend::reset(s);
            }
        });
        client.wait().await;
        let outcome = within("the relay", relayed).await;
        let at_backend = backend.seen().await;
        assert_eq!(
            (at_backend.bytes, at_backend.end),
            (vec![7], End::Reset),
            "{kind}"
        );
        assert_eq!(
            (outcome.to_backend, outcome.to_client, outcome.end),
            (1, 1, RelayEnd::Error),
            "{kind}"
        );
        rig.assert_released().await;
    });
}

#[test]
fn the_idle_timeout_closes_both_sides_with_a_fin() {
    on_each_driver(|kind| async move {
        let backend = Backend::silent();
        let rig = Rig::new();
        let relayed = rig.spawn(backend.addr, Duration::from_millis(100));
        let client = off_thread({
            let front = rig.front();
            move || read_to_end(&mut connect(front))
        });
        let seen = client.wait().await;
        assert_eq!(seen.end, End::Eof, "{kind}: the client sees a FIN");
        assert_eq!(
            backend.seen().await.end,
            End::Eof,
            "{kind}: so does the backend"
        );
        let outcome = within("the relay", relayed).await;
        assert_eq!(outcome.end, RelayEnd::IdleTimeout, "{kind}");
        rig.assert_released().await;
    });
}

/// A relayed connection to an echo backend that moved one byte each way, then sits idle; the
/// client reports how its reading ended after that.
async fn idle_connection(
    rig: &Rc<Rig>,
    backend: &Backend,
) -> (
    monoio::task::JoinHandle<RelayOutcome>,
    super::Pending<backend::Seen>,
) {
    let relayed = rig.spawn(backend.addr, NEVER);
    let (ready, established) = signal();
    let client = off_thread({
        let front = rig.front();
        move || {
            let mut s = connect(front);
            round_trip(&mut s, 9);
            ready.send(()).unwrap();
            read_to_end(&mut s)
        }
    });
    wait_for("the connection relayed", &established).await;
    // Nothing in flight: the connection holds no relay buffer while it waits.
    until("an idle connection's buffers back in the pool", || {
        rig.pool.free() == PREFILLED
    })
    .await;
    (relayed, client)
}

#[test]
fn a_drain_deadline_resets_both_sides() {
    on_each_driver(|kind| async move {
        let backend = Backend::echo();
        let rig = Rig::new();
        let (relayed, client) = idle_connection(&rig, &backend).await;
        rig.timers
            .close_matching(monoio::time::Instant::now(), |_| true);
        assert_eq!(client.wait().await.end, End::Reset, "{kind}: the client");
        assert_eq!(backend.seen().await.end, End::Reset, "{kind}: the backend");
        let outcome = within("the relay", relayed).await;
        assert_eq!(
            (outcome.to_backend, outcome.to_client, outcome.end),
            (1, 1, RelayEnd::Drained),
            "{kind}"
        );
        rig.assert_released().await;
    });
}

#[test]
fn abort_all_resets_both_sides() {
    on_each_driver(|kind| async move {
        let backend = Backend::echo();
        let rig = Rig::new();
        let (relayed, client) = idle_connection(&rig, &backend).await;
        assert_eq!(rig.timers.abort_all(), 1, "{kind}");
        assert_eq!(client.wait().await.end, End::Reset, "{kind}: the client");
        assert_eq!(backend.seen().await.end, End::Reset, "{kind}: the backend");
        let outcome = within("the relay", relayed).await;
        assert_eq!(
            (outcome.to_backend, outcome.to_client, outcome.end),
            (1, 1, RelayEnd::Cut),
            "{kind}"
        );
        rig.assert_released().await;
    });
}
