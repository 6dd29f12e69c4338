//! Demo traffic: small local backends that say who they are, and a burst client that measures
//! latency through the proxy. Used by `ringlb demo`; not part of the proxy's data path, and
//! run on runtimes built as the workers build theirs.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use proxy_core::IoDriver;

/// Running demo backends (they live until the process exits).
#[derive(Debug)]
pub struct DemoBackends {
    /// Addresses actually bound, in the order asked for.
    pub addrs: Vec<SocketAddr>,
}

/// Starts one backend per address on a background thread. Each answers an HTTP request with
/// `hello from backend-N` and closes; any other input is echoed back line by line, prefixed with
/// its name, so both `curl` and `nc` show which backend served them.
pub fn start_backends(addrs: &[SocketAddr]) -> io::Result<DemoBackends> {
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for addr in addrs {
        let l = std::net::TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("demo backend {addr}: {e}")))?;
        l.set_nonblocking(true)?;
        bound.push(l.local_addr()?);
        listeners.push(l);
    }
    std::thread::Builder::new()
        .name("demo-backends".into())
        .spawn(move || {
            let Ok(mut rt) = proxy_core::runtime(IoDriver::Auto) else {
                return;
            };
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for (i, l) in listeners.into_iter().enumerate() {
                    let name: Rc<str> = format!("backend-{}", i + 1).into();
                    tasks.push(monoio::spawn(serve_backend(l, name)));
                }
                for t in tasks {
                    t.await;
                }
            });
        })?;
    Ok(DemoBackends { addrs: bound })
}

async fn serve_backend(l: std::net::TcpListener, name: Rc<str>) {
    let Ok(listener) = TcpListener::from_std(l) else {
        return;
    };
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            monoio::spawn(backend_conn(stream, Rc::clone(&name)));
        }
    }
}

async fn backend_conn(mut stream: TcpStream, name: Rc<str>) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (res, b) = stream.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if looks_like_http(&buf) {
            if !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                if buf.len() == buf.capacity() {
                    return;
                }
                continue; // headers not complete yet: read more into the same buffer
            }
            let body = format!("hello from {name}\n");
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.into_bytes()).await;
            return;
        }
        let mut out = Vec::with_capacity(buf.len() + name.len() + 2);
        for line in buf.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(line);
        }
        if stream.write_all(out).await.0.is_err() {
            return;
        }
        buf.clear();
    }
}

fn looks_like_http(buf: &[u8]) -> bool {
    [
        "GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ",
    ]
    .iter()
    .any(|m| buf.starts_with(m.as_bytes()))
}

/// What a burst measured.
#[derive(Debug)]
pub struct BurstReport {
    /// Requests answered, per backend name, sorted by name.
    pub per_backend: Vec<(String, u64)>,
    /// Requests that failed (connect, reset, bad answer).
    pub failed: u64,
    /// Per-request latency (connect + request + full answer), microseconds.
    pub latency_us: Histogram<u64>,
    /// Wall time of the whole burst.
    pub elapsed: Duration,
}

/// Sends `requests` HTTP requests through `target`, one new connection each, with up to
/// `concurrency` in flight, and measures each one.
pub fn burst(target: SocketAddr, requests: usize, concurrency: usize) -> io::Result<BurstReport> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("demo-client".into())
        .spawn(move || {
            let result = proxy_core::runtime(IoDriver::Auto)
                .map(|mut rt| rt.block_on(run_burst(target, requests, concurrency)));
            let _ = tx.send(result);
        })?;
    rx.recv()
        .map_err(|_| io::Error::other("demo client thread died"))?
}

async fn run_burst(target: SocketAddr, requests: usize, concurrency: usize) -> BurstReport {
    let start = Instant::now();
    let next = Rc::new(std::cell::Cell::new(0usize));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let next = Rc::clone(&next);
        tasks.push(monoio::spawn(async move {
            let mut results = Vec::new();
            loop {
                let i = next.get();
                if i >= requests {
                    return results;
                }
                next.set(i + 1);
                let t0 = Instant::now();
                let r = one_request(target).await;
                results.push(r.map(|name| (name, t0.elapsed())));
            }
        }));
    }
    let mut latency_us =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    let mut per_backend = std::collections::BTreeMap::<String, u64>::new();
    let mut failed = 0;
    for t in tasks {
        for r in t.await {
            match r {
                Ok((name, d)) => {
                    *per_backend.entry(name).or_default() += 1;
                    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
                    latency_us.saturating_record(us);
                }
                Err(_) => failed += 1,
            }
        }
    }
    BurstReport {
        per_backend: per_backend.into_iter().collect(),
        failed,
        latency_us,
        elapsed: start.elapsed(),
    }
}

async fn one_request(target: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect_addr(target).await?;
    s.set_nodelay(true)?;
    let req = b"GET / HTTP/1.1\r\nhost: ringlb-demo\r\nconnection: close\r\n\r\n".to_vec();
    s.write_all(req).await.0?;
    let mut answer = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (res, b) = s.read(buf).await;
        buf = b;
        if res? == 0 {
            break;
        }
        answer.extend_from_slice(&buf);
        buf.clear();
    }
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .find_map(|l| l.strip_prefix("hello from "))
        .map(str::to_owned)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected answer"))
}
