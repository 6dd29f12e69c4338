//! The TCP relay: both directions at once, half-close forwarded, idle timeout, pooled buffers.
//!
//! Each direction waits for readability *without* a buffer, then reads into a buffer taken
//! from the worker's pool, writes it all out and gives the buffer back. So a connection with
//! nothing in flight holds no relay buffer at all, and a busy one uses a large buffer. While a
//! read fills the whole buffer, the next read follows at once (more is likely queued).

use std::cell::{RefCell, UnsafeCell};
use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::Arc;

use balancers::{BackendState, ConnectionGuard};
use std::time::Duration;

use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use crate::idle::{Activity, Close, IdleTimers};
use crate::pool::BufferPool;
use crate::sys::{abort, with_socket};

/// How a relayed connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RelayEnd {
    /// Both directions reached end of stream.
    Closed,
    /// No byte moved in either direction for the idle timeout; both sides were closed.
    IdleTimeout,
    /// Its backend left the table and the drain deadline passed; both sides were reset.
    Drained,
    /// Still open when a shutdown's drain deadline passed; both sides were reset.
    Cut,
    /// A socket failed (typically a reset); the other side was reset too.
    Error,
}

/// Bytes relayed and how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RelayOutcome {
    pub(crate) to_backend: u64,
    pub(crate) to_client: u64,
    pub(crate) end: RelayEnd,
}

/// Shared access to the stream behind split halves, for readiness waits and socket options.
#[derive(Clone)]
struct Peer(Rc<UnsafeCell<TcpStream>>);

impl Peer {
    fn stream(&self) -> &TcpStream {
        // SAFETY: monoio's `into_split` shares one `TcpStream` between its halves through this
        // `Rc<UnsafeCell<_>>` and marks `TcpStream` as `Split`: read-side and write-side
        // operations are independent and only clone the descriptor. Everything runs on this
        // worker thread, and the operations used through this reference (`readable`,
        // `as_raw_fd`) only read the descriptor, which nothing ever changes.
        unsafe { &*self.0.get() }
    }

    /// Stops both directions of the socket (wakes pending reads with end of stream and
    /// pending writes with an error); sends a FIN.
    fn shutdown_both(&self) {
        let _ = with_socket(self.stream(), |s| s.shutdown(Shutdown::Both));
    }

    /// Resets the connection at once (see [`crate::sys::abort`]).
    fn abort(&self) {
        abort(self.stream());
    }

    /// Wakes pending reads without sending anything to the peer.
    fn shutdown_read(&self) {
        let _ = with_socket(self.stream(), |s| s.shutdown(Shutdown::Read));
    }
}

/// The two sockets of a relayed connection, closed together by the idle timeout, and the
/// backend's count of it.
pub(crate) struct PeerPair {
    client: Peer,
    server: Peer,
    guard: RefCell<ConnectionGuard>,
}

impl PeerPair {
    /// Identity of the backend this connection is relayed to.
    pub(crate) fn backend(&self) -> *const BackendState {
        Arc::as_ptr(self.guard.borrow().state())
    }
}

impl Close for PeerPair {
    fn close(&self) {
        self.client.shutdown_both();
        self.server.shutdown_both();
    }

    fn abort(&self) {
        self.client.abort();
        self.server.abort();
    }
}

/// Relays `client` ↔ `server` until both directions end, the idle timeout passes (the worker's
/// [`IdleTimers`] then closes both sockets), a drain deadline passes (both are reset), or a
/// socket fails. Half-close is forwarded: end of
/// stream from one side becomes `shutdown(Write)` on the other while the opposite direction
/// keeps flowing.
pub(crate) async fn relay(
    client: TcpStream,
    server: TcpStream,
    guard: ConnectionGuard,
    idle: Duration,
    pool: &BufferPool,
    timers: &IdleTimers<PeerPair>,
) -> RelayOutcome {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let client_peer = Peer(Rc::clone(&client_rd.0));
    let server_peer = Peer(Rc::clone(&server_rd.0));
    let activity = Rc::new(Activity::new(
        idle,
        PeerPair {
            client: client_peer.clone(),
            server: server_peer.clone(),
            guard: RefCell::new(guard),
        },
    ));
    timers.insert(&activity);
    let up = copy_one_way(
        &mut client_rd,
        &client_peer,
        &mut server_wr,
        &server_peer,
        pool,
        &activity,
    );
    let down = copy_one_way(
        &mut server_rd,
        &server_peer,
        &mut client_wr,
        &client_peer,
        pool,
        &activity,
    );
    let (up, down) = monoio::join!(up, down);
    timers.remove(&activity);
    let end = if activity.cut() {
        RelayEnd::Cut
    } else if activity.drained() {
        RelayEnd::Drained
    } else if activity.expired() {
        RelayEnd::IdleTimeout
    } else if up.failed || down.failed {
        RelayEnd::Error
    } else {
        RelayEnd::Closed
    };
    RelayOutcome {
        to_backend: up.bytes,
        to_client: down.bytes,
        end,
    }
}

/// Result of one direction.
struct OneWay {
    bytes: u64,
    failed: bool,
}

/// Copies `src` → `dst` until end of stream (then `shutdown(Write)` on `dst`) or an error
/// (then `dst` is reset at once and both sockets stop reading, which ends the other direction
/// too).
///
/// The future of this function is what an idle connection keeps in memory (twice), so the
/// read-and-write step lives in its own boxed future that exists only while bytes move.
async fn copy_one_way(
    src: &mut OwnedReadHalf<TcpStream>,
    src_peer: &Peer,
    dst: &mut OwnedWriteHalf<TcpStream>,
    dst_peer: &Peer,
    pool: &BufferPool,
    activity: &Activity<PeerPair>,
) -> OneWay {
    let mut bytes = 0u64;
    let mut wait_readable = true;
    loop {
        // Not relaxed: on epoll a stale "readable" flag would make the read park with a pooled
        // buffer; the check costs one poll(2) there and nothing extra on io_uring.
        let step = if wait_readable && src_peer.stream().readable(false).await.is_err() {
            Step::Failed
        } else {
            Box::pin(move_once(src, dst, pool)).await
        };
        match step {
            Step::Moved { n, filled } => {
                bytes += n as u64;
                activity.touch();
                // A full buffer means more is likely queued: read again without waiting.
                wait_readable = !filled;
            }
            Step::Spurious => wait_readable = true,
            Step::Eof => {
                // IPVS counts a connection as inactive once it starts closing.
                activity.closer().guard.borrow_mut().set_inactive();
                return OneWay {
                    bytes,
                    failed: false,
                };
            }
            Step::Failed => {
                // Reset now, not at close: the relay's write half sends a FIN when it is
                // dropped (monoio shuts the write side down then), and a peer that saw that
                // end of stream first would take a cut-short transfer for a complete one.
                dst_peer.abort();
                src_peer.shutdown_read();
                dst_peer.shutdown_read();
                return OneWay {
                    bytes,
                    failed: true,
                };
            }
        }
    }
}

/// What one read-and-write step did.
enum Step {
    /// `n` bytes relayed; `filled` when the read filled the whole buffer.
    Moved { n: usize, filled: bool },
    /// The socket was not readable after all.
    Spurious,
    /// End of stream, forwarded as `shutdown(Write)`.
    Eof,
    /// A read or write failed.
    Failed,
}

/// Reads once into a pooled buffer and writes all of it; the buffer goes back to the pool.
async fn move_once(
    src: &mut OwnedReadHalf<TcpStream>,
    dst: &mut OwnedWriteHalf<TcpStream>,
    pool: &BufferPool,
) -> Step {
    let (res, buf) = src.read(pool.take()).await;
    let n = match res {
        Ok(0) => {
            pool.put(buf);
            let _ = dst.shutdown().await;
            return Step::Eof;
        }
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            pool.put(buf);
            return Step::Spurious;
        }
        Err(_) => {
            pool.put(buf);
            return Step::Failed;
        }
    };
    let filled = n == buf.capacity();
    let (res, buf) = dst.write_all(buf).await;
    pool.put(buf);
    match res {
        Ok(_) => Step::Moved { n, filled },
        Err(_) => Step::Failed,
    }
}
