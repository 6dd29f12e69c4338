//! Hostile clients for the tests of ringlb's HTTP ports (slow clients that never finish their
//! request head), a probe that reports failures instead of panicking, and what `/proc` says
//! of a process's memory and threads.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The head every slow client starts, and then never ends: one more byte of a header value
/// at each turn.
const SLOW_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: ";

/// Clients that each send one byte of a request head now and then and never finish it, all
/// driven by one thread.
pub struct SlowClients {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<usize>,
}

/// One slow client: its socket and how much of its head it has sent.
struct Slow {
    stream: TcpStream,
    sent: usize,
}

impl Slow {
    fn connect(to: SocketAddr) -> Option<Slow> {
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        stream.set_nonblocking(true).ok()?;
        Some(Slow { stream, sent: 0 })
    }

    /// Sends the next byte; `false` once the server has closed the connection.
    fn dribble(&mut self) -> bool {
        let mut answer = [0u8; 512];
        match self.stream.read(&mut answer) {
            // Closed (or answered, which only a closing server does to an unfinished head).
            Ok(_) => return false,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
        let byte = SLOW_HEAD.get(self.sent).copied().unwrap_or(b'a');
        match self.stream.write(&[byte]) {
            Ok(n) => {
                self.sent += n;
                true
            }
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        }
    }
}

impl SlowClients {
    /// `n` slow clients of `to`, each sending a byte every `every`; with `reconnect`, one that
    /// finds itself closed connects again at its next turn. From inside network namespace
    /// `netns` when given. Returns once every client has tried to connect once.
    pub fn start(
        to: SocketAddr,
        n: usize,
        every: Duration,
        reconnect: bool,
        netns: Option<&str>,
    ) -> SlowClients {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let netns = netns.map(str::to_owned);
        let (started_tx, started) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            if let Some(ns) = netns {
                super::netns::enter(&ns);
            }
            let mut clients: Vec<Option<Slow>> = (0..n).map(|_| Slow::connect(to)).collect();
            let mut connects = n;
            let _ = started_tx.send(());
            while !stopped.load(Ordering::Relaxed) {
                for client in &mut clients {
                    if client.as_mut().is_some_and(Slow::dribble) {
                        continue;
                    }
                    *client = None;
                    if reconnect {
                        connects += 1;
                        *client = Slow::connect(to);
                    }
                }
                // Pacing of the attack, not readiness.
                std::thread::sleep(every);
            }
            connects
        });
        started
            .recv_timeout(super::PATIENCE)
            .expect("the slow clients connected");
        SlowClients { stop, thread }
    }

    /// Stops them (their sockets close); returns how many connections they opened in all.
    pub fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the slow clients' thread")
    }
}

/// `GET target` with `Connection: close` and 10 s to answer: the status and body, or what
/// went wrong.
pub fn probe(to: SocketAddr, target: &str) -> Result<(u16, String), String> {
    let wait = Duration::from_secs(10);
    let mut s = TcpStream::connect_timeout(&to, wait).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .map_err(|e| format!("read: {e} after {raw:?}"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {raw:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// A number from `/proc/PID/status`: `VmRSS` (KiB) or `Threads`.
pub fn proc_status(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
