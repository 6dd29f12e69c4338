//! The descriptor budget, through the real binary under a small open-file limit (`prlimit`):
//! what the data plane may hold is the limit less what the process holds less a reserve, so
//! the admin API still answers when the data plane is full; TCP connections past it are reset
//! at once (not left hanging in the accept queue), UDP flows past it are refused and counted,
//! and the warnings are rate-limited with a count.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use support::admin::{admin_addr, get, scrape, scrape_until, series, value};
use support::*;

/// Starts `ringlb ARGS` with an open-file limit of `limit` (soft and hard, so ringlb cannot
/// raise it), through `prlimit` from util-linux.
fn under_nofile(limit: u32, args: &[&str]) -> Ringlb {
    Ringlb::start_under(
        &["prlimit", &format!("--nofile={limit}:{limit}"), "--"],
        args,
    )
}

/// What one connection through the proxy got: its echo, or a reset.
fn echo_or_reset(addr: SocketAddr) -> Result<TcpStream, ErrorKind> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.kind())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"x").map_err(|e| e.kind())?;
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => Ok(s),
        Ok(_) => Err(ErrorKind::UnexpectedEof),
        Err(e) => Err(e.kind()),
    }
}

fn lines_with(log: &str, text: &str) -> usize {
    log.lines().filter(|l| l.contains(text)).count()
}

#[test]
fn tcp_past_the_budget_is_reset_at_once_and_the_admin_api_still_answers() {
    for driver in ["uring", "epoll"] {
        tcp_past_the_budget(driver);
    }
}

fn tcp_past_the_budget(driver: &str) {
    raise_nofile();
    let backend = echo_server();
    let to = backend.to_string();
    let proxy = under_nofile(
        256,
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &to,
            "--workers",
            "1",
            "--io-driver",
            driver,
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = admin_addr(&proxy);
    let cap = value(&scrape(admin), "ringlb_descriptors_budget", &[]) as usize;
    assert!(
        (64..256 - 64).contains(&cap),
        "{driver}: 256 less what is held less a reserve of 64, got {cap}"
    );
    let fits = cap / 2;
    let mut held = Vec::new();
    for i in 0..fits {
        held.push(echo_or_reset(proxy.addr()).unwrap_or_else(|e| {
            panic!("{driver}: connection {i} of {fits} within the budget: {e:?}")
        }));
    }
    // Past the budget: reset at once, never left waiting.
    let past = 40;
    for i in 0..past {
        let got = echo_or_reset(proxy.addr()).map(drop);
        assert_eq!(
            got,
            Err(ErrorKind::ConnectionReset),
            "{driver}: connection {i} past the budget"
        );
    }
    // The admin API answers from its reserve while the data plane is full.
    assert_eq!(get(admin, "/healthz"), "ok\n");
    let m = scrape(admin);
    assert_eq!(
        value(&m, "ringlb_descriptors_in_use", &[]) as usize,
        2 * fits
    );
    let refused = value(
        &m,
        "ringlb_descriptors_refused_total",
        &[("protocol", "tcp")],
    );
    assert_eq!(refused, f64::from(past), "{driver}");
    assert_eq!(
        series(
            &m,
            "ringlb_connections_failed_total",
            &[("service", "default"), ("reason", "descriptors")]
        ),
        Some(f64::from(past))
    );
    // One warning with its count, not one per connection.
    proxy.wait_stderr("out of descriptors: new connections are reset");
    let log = proxy.stderr();
    let warnings = lines_with(&log, "out of descriptors: new connections are reset");
    assert!(
        (1..=2).contains(&warnings),
        "{driver}: {warnings} warnings:\n{log}"
    );
    assert!(log.contains("(1 since the last warning)"), "{log}");
    // Descriptors come back when connections end.
    drop(held);
    let start = Instant::now();
    loop {
        match echo_or_reset(proxy.addr()) {
            Ok(_) => break,
            Err(e) => assert!(
                start.elapsed() < PATIENCE,
                "{driver}: never served again: {e:?}"
            ),
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn udp_flows_past_the_budget_are_refused_counted_and_warned_of() {
    raise_nofile();
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = backend.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = backend.recv_from(&mut buf) {
            let _ = backend.send_to(&buf[..n], from);
        }
    });
    let proxy = under_nofile(
        160,
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &to,
            "--proto",
            "udp",
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = admin_addr(&proxy);
    // The default max_flows (65,536) cannot be met under this limit: said at start (the log
    // is read by another thread, which may not have read it yet).
    proxy.wait_stderr("the config allows 65536 UDP flows (max_flows, 1 descriptor each)");
    let cap = value(&scrape(admin), "ringlb_descriptors_budget", &[]) as usize;
    assert!((40..160 - 40).contains(&cap), "{cap}");
    let past = 20;
    let clients: Vec<UdpSocket> = (0..cap + past)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for c in &clients {
        c.send_to(b"ping", proxy.addr()).unwrap();
    }
    let opened = |m: &prometheus_parse::Scrape| {
        value(
            m,
            "ringlb_udp_flows_opened_total",
            &[("service", "default")],
        )
    };
    let refused = |m: &prometheus_parse::Scrape| {
        value(
            m,
            "ringlb_udp_flows_refused_total",
            &[("service", "default"), ("reason", "descriptors")],
        )
    };
    let m = scrape_until(admin, "every first datagram handled", |m| {
        opened(m) + refused(m) == (cap + past) as f64
    });
    assert_eq!(opened(&m), cap as f64);
    assert_eq!(refused(&m), past as f64);
    assert_eq!(
        value(
            &m,
            "ringlb_descriptors_refused_total",
            &[("protocol", "udp")]
        ),
        past as f64
    );
    // The flows within the budget are answered.
    for c in &clients {
        c.set_nonblocking(true).unwrap();
    }
    let mut answered = vec![false; clients.len()];
    let start = Instant::now();
    while answered.iter().filter(|a| **a).count() < cap {
        assert!(start.elapsed() < PATIENCE, "replies missing");
        for (c, a) in clients.iter().zip(answered.iter_mut()) {
            let mut buf = [0u8; 8];
            if c.recv(&mut buf).is_ok() {
                *a = true;
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    proxy.wait_stderr("out of descriptors: new UDP flows are refused");
    let log = proxy.stderr();
    let warnings = lines_with(&log, "out of descriptors: new UDP flows are refused");
    assert!((1..=2).contains(&warnings), "{warnings} warnings:\n{log}");
}
