//! Client loads that run while ringlb upgrades, restarts or loses its worker, and what they
//! saw: a paced loop of new TCP connections with one request each, long-lived TCP streams that
//! check every byte, and UDP clients that each ask in turn and note which backend answered.
//! Bounded: every thread stops when told, each connection and datagram has a deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long one connection attempt, one answer or one datagram's reply may take before it
/// counts as failed.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long a UDP client waits for a reply before it counts the datagram unanswered.
const UDP_WAIT: Duration = Duration::from_secs(1);

/// What to run, and where.
#[derive(Clone)]
pub struct Spec {
    /// The network namespace the clients run in (`None`: this one).
    pub netns: Option<String>,
    /// New TCP connections, one request each: where to, what each sends and must get back.
    pub tcp: Vec<SocketAddr>,
    pub send: Vec<u8>,
    pub expect: Vec<u8>,
    /// New connections per second per address, in all.
    pub per_second: u32,
    /// Long-lived echo streams (to the first TCP address), each `stream_for` long, one after
    /// another while the load runs.
    pub streams: usize,
    pub stream_for: Duration,
    /// UDP clients asking `udp` in turn; the reply is the backend's name, then the question.
    pub udp: Option<SocketAddr>,
    pub udp_clients: usize,
}

impl Spec {
    /// New connections to `tcp` at `per_second`, each sending a line and reading it back (an
    /// echo backend), and nothing else.
    pub fn echo(tcp: SocketAddr, per_second: u32) -> Spec {
        Spec {
            netns: None,
            tcp: vec![tcp],
            send: b"ping\n".to_vec(),
            expect: b"ping\n".to_vec(),
            per_second,
            streams: 0,
            stream_for: Duration::from_secs(1),
            udp: None,
            udp_clients: 0,
        }
    }
}

/// Something that went wrong, and when the attempt started.
#[derive(Debug, Clone)]
pub struct Failure {
    pub at: Instant,
    pub what: String,
}

/// What one kind of client saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: u64,
    pub failures: Vec<Failure>,
    /// The longest time from the start of an attempt to its connection, and to its answer.
    pub longest_connect: Duration,
    pub longest_answer: Duration,
    /// Bytes checked (streams).
    pub bytes: u64,
    /// UDP: each client's backend changes, when they were seen.
    pub moves: Vec<Failure>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failures.extend(other.failures);
        self.moves.extend(other.moves);
        self.longest_connect = self.longest_connect.max(other.longest_connect);
        self.longest_answer = self.longest_answer.max(other.longest_answer);
        self.bytes += other.bytes;
    }

    /// The failures of attempts started in `window` (from, to).
    pub fn failures_in(&self, from: Instant, to: Instant) -> Vec<&Failure> {
        self.failures
            .iter()
            .filter(|f| f.at >= from && f.at < to)
            .collect()
    }
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    requests: Vec<JoinHandle<Tally>>,
    streams: Vec<JoinHandle<Tally>>,
    udp: Vec<JoinHandle<Tally>>,
    started: Instant,
}

/// What a load saw, by kind.
#[derive(Debug)]
pub struct Report {
    pub requests: Tally,
    pub streams: Tally,
    pub udp: Tally,
    pub elapsed: Duration,
}

impl Report {
    /// Nothing failed, no byte changed, no UDP client moved to another backend.
    pub fn assert_nothing_lost(&self) {
        for (kind, tally) in [
            ("request", &self.requests),
            ("stream", &self.streams),
            ("udp", &self.udp),
        ] {
            assert!(tally.failures.is_empty(), "{kind}: {:?}", tally.failures);
        }
        assert!(self.udp.moves.is_empty(), "{:?}", self.udp.moves);
    }

    /// One line per kind, for the test's output and the benchmark's table.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        format!(
            "requests: {} ok ({:.0}/s), {} failed, longest connect {:?}, longest answer {:?}\n\
             streams: {} ok, {} bytes checked, {} failed\n\
             udp: {} answered, {} unanswered, {} backend moves",
            self.requests.ok,
            self.requests.ok as f64 / secs,
            self.requests.failures.len(),
            self.requests.longest_connect,
            self.requests.longest_answer,
            self.streams.ok,
            self.streams.bytes,
            self.streams.failures.len(),
            self.udp.ok,
            self.udp.failures.len(),
            self.udp.moves.len(),
        )
    }
}

impl Load {
    pub fn start(spec: &Spec) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let spawn = |f: Box<dyn FnOnce() -> Tally + Send>| {
            let netns = spec.netns.clone();
            thread::spawn(move || {
                if let Some(ns) = netns {
                    super::netns::enter(&ns);
                }
                f()
            })
        };
        let requests = spec
            .tcp
            .iter()
            .map(|&to| {
                let (stop, spec) = (Arc::clone(&stop), spec.clone());
                spawn(Box::new(move || requests(to, &spec, &stop)))
            })
            .collect();
        let streams = (0..spec.streams)
            .map(|i| {
                let (stop, spec) = (Arc::clone(&stop), spec.clone());
                spawn(Box::new(move || {
                    streams(spec.tcp[0], &spec, i as u64, &stop)
                }))
            })
            .collect();
        let udp = (0..spec.udp_clients)
            .filter_map(|_| spec.udp)
            .map(|to| {
                let stop = Arc::clone(&stop);
                spawn(Box::new(move || udp_client(to, &stop)))
            })
            .collect();
        Load {
            stop,
            requests,
            streams,
            udp,
            started: Instant::now(),
        }
    }

    /// Stops every client after its current attempt and sums up.
    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let sum = |handles: Vec<JoinHandle<Tally>>| {
            let mut all = Tally::default();
            for h in handles {
                all.merge(h.join().expect("a load thread panicked"));
            }
            all
        };
        let elapsed = self.started.elapsed();
        Report {
            requests: sum(self.requests),
            streams: sum(self.streams),
            udp: sum(self.udp),
            elapsed,
        }
    }
}

/// The kind of an error, in words a report can count by.
fn kind(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused".into(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            "reset".into()
        }
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".into(),
        ErrorKind::UnexpectedEof => "cut short".into(),
        _ => format!("{e}"),
    }
}

/// New connections to `to` at `spec.per_second`, one request each.
fn requests(to: SocketAddr, spec: &Spec, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let every = Duration::from_secs(1) / spec.per_second.max(1);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        }
        next += every;
        let at = Instant::now();
        match request(to, spec, at, &mut tally) {
            Ok(()) => {
                tally.ok += 1;
                tally.longest_answer = tally.longest_answer.max(at.elapsed());
            }
            Err(what) => tally.failures.push(Failure { at, what }),
        }
    }
    tally
}

fn request(to: SocketAddr, spec: &Spec, at: Instant, tally: &mut Tally) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&to, DEADLINE).map_err(|e| kind(&e))?;
    tally.longest_connect = tally.longest_connect.max(at.elapsed());
    s.set_read_timeout(Some(DEADLINE)).map_err(|e| kind(&e))?;
    s.write_all(&spec.send).map_err(|e| kind(&e))?;
    s.shutdown(Shutdown::Write).map_err(|e| kind(&e))?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).map_err(|e| kind(&e))?;
    if got != spec.expect {
        return Err(format!("answered {:?}", String::from_utf8_lossy(&got)));
    }
    Ok(())
}

/// Echo streams to `to`, one after another: chunks written every 10 ms and read back, each
/// byte compared.
fn streams(to: SocketAddr, spec: &Spec, seed: u64, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let at = Instant::now();
        match stream(to, spec.stream_for, seed * 1_000_003 + n) {
            Ok(bytes) => {
                tally.ok += 1;
                tally.bytes += bytes;
            }
            Err(what) => tally.failures.push(Failure { at, what }),
        }
    }
    tally
}

fn stream(to: SocketAddr, length: Duration, seed: u64) -> Result<u64, String> {
    let mut s = TcpStream::connect_timeout(&to, DEADLINE).map_err(|e| kind(&e))?;
    s.set_read_timeout(Some(DEADLINE)).map_err(|e| kind(&e))?;
    let data = super::payload(4096, seed);
    let mut back = vec![0u8; data.len()];
    let mut bytes = 0;
    let end = Instant::now() + length;
    while Instant::now() < end {
        s.write_all(&data).map_err(|e| kind(&e))?;
        s.read_exact(&mut back).map_err(|e| kind(&e))?;
        if back != data {
            return Err(format!("bytes changed after {bytes}"));
        }
        bytes += data.len() as u64;
        thread::sleep(Duration::from_millis(10));
    }
    s.shutdown(Shutdown::Write).map_err(|e| kind(&e))?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).map_err(|e| kind(&e))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the end", rest.len()));
    }
    Ok(bytes)
}

/// One UDP client asking `to` in turn, from one source port throughout: counts replies,
/// datagrams unanswered within [`UDP_WAIT`], and changes of the backend that answers.
fn udp_client(to: SocketAddr, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let any: SocketAddr = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .unwrap();
    let socket = UdpSocket::bind(any).expect("bind a UDP client");
    socket.connect(to).expect("connect a UDP client");
    socket.set_read_timeout(Some(UDP_WAIT)).unwrap();
    let mut backend: Option<String> = None;
    let mut seq = 0u64;
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let ask = format!("q{seq}");
        let at = Instant::now();
        if let Err(e) = socket.send(ask.as_bytes()) {
            tally.failures.push(Failure { at, what: kind(&e) });
            thread::sleep(Duration::from_millis(10));
            continue;
        }
        // Replies to earlier, late datagrams are skipped.
        let answer = loop {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if text.ends_with(&ask) {
                        break Ok(text);
                    }
                }
                Err(e) => break Err(kind(&e)),
            }
        };
        match answer {
            Ok(text) => {
                tally.ok += 1;
                // What the backend put before the question: its name.
                let name = text[..text.len() - ask.len()].trim().to_owned();
                if backend.as_ref().is_some_and(|b| *b != name) {
                    let what = format!("{} to {name}", backend.as_deref().unwrap_or(""));
                    tally.moves.push(Failure { at, what });
                }
                backend = Some(name);
            }
            Err(what) => tally.failures.push(Failure { at, what }),
        }
        thread::sleep(Duration::from_millis(5));
    }
    tally
}
