//! Scripted backends on loopback, and what a blocking peer saw.
//!
//! Each backend listens on its own port 0 and runs its script for every connection on a thread
//! of its own; what a connection saw ([`Seen`]) is reported once it ends. Two backends answer
//! nothing by design: [`Backend::refusing`] (a bound port nobody listens on: the kernel resets
//! the SYN) and [`Backend::blackhole`] (a listener whose accept queue is full: the SYN is
//! dropped, so a connect waits for its deadline).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use socket2::{Domain, Socket, Type};

use super::PATIENCE;

/// How a peer's reading ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// End of stream: the other side closed or half-closed cleanly (FIN).
    Eof,
    /// `ECONNRESET`.
    Reset,
    /// Anything else (a timeout means the test waited in vain).
    Other(io::ErrorKind),
}

/// What one connection of a backend (or a client) read, and how its reading ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) bytes: Vec<u8>,
    pub(crate) end: End,
}

impl End {
    /// How a failed read or write ended the connection.
    pub(crate) fn of(e: &io::Error) -> End {
        match e.kind() {
            io::ErrorKind::ConnectionReset => End::Reset,
            kind => End::Other(kind),
        }
    }
}

/// Reads `s` until it ends; everything read, and how.
pub(crate) fn read_to_end(s: &mut TcpStream) -> Seen {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                return Seen {
                    bytes,
                    end: End::Eof,
                }
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Seen {
                    bytes,
                    end: End::of(&e),
                }
            }
        }
    }
}

/// Sends `bytes`, half-closes, and reads until the connection ends. A reset that arrives
/// while sending is reported as such: the failed write takes the socket's error, and a read
/// after it would only see the end of stream. (A failed half-close takes no error: the read
/// after it reports the reset.)
pub(crate) fn send_then_read(s: &mut TcpStream, bytes: &[u8]) -> Seen {
    if let Err(e) = s.write_all(bytes) {
        return Seen {
            bytes: Vec::new(),
            end: End::of(&e),
        };
    }
    let _ = s.shutdown(Shutdown::Write);
    read_to_end(s)
}

/// A blocking connection to `addr` with [`PATIENCE`] as its read and write timeouts.
pub(crate) fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Sends one byte and reads it back (through an echo): the connection is relayed end to end.
pub(crate) fn round_trip(s: &mut TcpStream, byte: u8) {
    s.write_all(&[byte]).expect("send");
    let mut back = [0u8; 1];
    s.read_exact(&mut back).expect("the echo");
    assert_eq!(back[0], byte);
}

/// Closes `s` with a reset instead of a FIN.
pub(crate) fn reset(s: TcpStream) {
    Socket::from(s)
        .set_linger(Some(std::time::Duration::ZERO))
        .expect("SO_LINGER 0");
}

/// Deterministic pseudo-random bytes (xorshift), so a lost or repeated chunk cannot hide.
pub(crate) fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A backend on loopback and what its connections saw.
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: flume::Receiver<Seen>,
    /// The socket of a backend that runs no script (refusing, blackhole), kept open so its
    /// port stays taken.
    _socket: Option<Socket>,
    /// Connections that fill a blackhole's accept queue.
    _fillers: Vec<TcpStream>,
}

impl Backend {
    /// Runs `script` for every connection; reports what it returns.
    fn scripted(script: fn(&mut TcpStream) -> Seen) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, seen) = flume::unbounded();
        let count = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                count.fetch_add(1, Relaxed);
                s.set_read_timeout(Some(PATIENCE)).unwrap();
                s.set_write_timeout(Some(PATIENCE)).unwrap();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = tx.send(script(&mut s));
                });
            }
        });
        Backend {
            addr,
            accepted,
            seen,
            _socket: None,
            _fillers: Vec::new(),
        }
    }

    /// Sends back every byte; at end of stream half-closes its side too.
    pub(crate) fn echo() -> Backend {
        Backend::scripted(|s| {
            let mut bytes = Vec::new();
            let mut buf = [0u8; 8192];
            let end = loop {
                match s.read(&mut buf) {
                    Ok(0) => break End::Eof,
                    Ok(n) => {
                        bytes.extend_from_slice(&buf[..n]);
                        if let Err(e) = s.write_all(&buf[..n]) {
                            break End::Other(e.kind());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break End::Reset,
                    Err(e) => break End::Other(e.kind()),
                }
            };
            let _ = s.shutdown(Shutdown::Write);
            Seen { bytes, end }
        })
    }

    /// Sends [`SPOKEN`] bytes of [`payload`] (seed 2) and half-closes at once, then reads
    /// until the client ends.
    pub(crate) fn speaks_then_half_closes() -> Backend {
        Backend::scripted(|s| {
            s.write_all(&payload(SPOKEN, 2))
                .expect("the backend's bytes");
            s.shutdown(Shutdown::Write).expect("half-close");
            read_to_end(s)
        })
    }

    /// Reads until the client half-closes, then sends [`SPOKEN`] bytes of [`payload`] (seed
    /// 2) and half-closes.
    pub(crate) fn answers_after_eof() -> Backend {
        Backend::scripted(|s| {
            let seen = read_to_end(s);
            if seen.end == End::Eof {
                s.write_all(&payload(SPOKEN, 2)).expect("the answer");
                s.shutdown(Shutdown::Write).expect("half-close");
            }
            seen
        })
    }

    /// Resets the connection at once once it carries the client's first byte (not at accept:
    /// a reset that raced the proxy's connect would fail the connect, not the relay).
    pub(crate) fn resets() -> Backend {
        Backend::scripted(|s| {
            let mut first = [0u8; 1];
            let got = s.read(&mut first);
            Socket::from(s.try_clone().unwrap())
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
            Seen {
                bytes: first[..got.unwrap_or(0)].to_vec(),
                end: End::Eof,
            }
        })
    }

    /// Accepts and says nothing; reads until the other side ends.
    pub(crate) fn silent() -> Backend {
        Backend::scripted(read_to_end)
    }

    /// A port that is bound but not listening: every connect is refused (a reset), and no
    /// other socket can take the port while the backend lives.
    pub(crate) fn refusing() -> Backend {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        Backend::silent_on(socket, Vec::new())
    }

    /// A listener whose accept queue is full and never drained: the kernel drops every new
    /// SYN, so a connect gets no answer until its own deadline.
    pub(crate) fn blackhole() -> Backend {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        // Backlog 0 holds one established connection; once it is queued, SYNs are dropped.
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let filler = TcpStream::connect(addr).expect("the connection that fills the queue");
        let deadline = Instant::now() + PATIENCE;
        while accept_queue(addr) < 1 {
            assert!(
                Instant::now() < deadline,
                "the queue of {addr} never filled"
            );
            std::thread::yield_now();
        }
        Backend::silent_on(socket, vec![filler])
    }

    fn silent_on(socket: Socket, fillers: Vec<TcpStream>) -> Backend {
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        Backend {
            addr,
            accepted: Arc::new(AtomicUsize::new(0)),
            seen: flume::unbounded().1,
            _socket: Some(socket),
            _fillers: fillers,
        }
    }

    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Relaxed)
    }

    /// What the next connection to end saw (waits for it).
    pub(crate) async fn seen(&self) -> Seen {
        super::within("a backend's report", self.seen.recv_async())
            .await
            .expect("a scripted backend reports every connection")
    }
}

/// What [`Backend::speaks_then_half_closes`] and [`Backend::answers_after_eof`] send.
pub(crate) const SPOKEN: usize = 100_000;

/// Connections waiting in the accept queue of the IPv4 listener on `addr`: the receive queue
/// column of its `/proc/net/tcp` line (the kernel reports the accept backlog there for a
/// listening socket).
fn accept_queue(addr: SocketAddr) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{:04X}", addr.port());
    table
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // local address, remote, state 0A (LISTEN), tx_queue:rx_queue
            (cols.get(1) == Some(&local.as_str()) && cols.get(3) == Some(&"0A"))
                .then(|| cols.get(4)?.split(':').nth(1))
                .flatten()
        })
        .find_map(|rx| usize::from_str_radix(rx, 16).ok())
        .unwrap_or(0)
}
