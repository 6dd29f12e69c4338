//! The TCP data plane end to end, through real sockets, under both I/O drivers.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// Runs each scenario once per I/O driver, as its own test.
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        mod uring { $( #[test] fn $name() { super::$name("uring") } )* }
        mod epoll { $( #[test] fn $name() { super::$name("epoll") } )* }
    };
}

both_drivers!(
    echo_4_mib_byte_for_byte,
    client_half_close_keeps_backend_to_client_flowing,
    backend_half_close_keeps_client_to_backend_flowing,
    thousand_concurrent_connections_stay_intact,
    retry_lands_on_the_live_backend,
    all_backends_dead_resets_the_client,
    connect_timeout_moves_on_to_the_next_backend,
    idle_timeout_closes_both_sides,
    sigterm_drains_in_flight_and_refuses_new,
    the_drain_deadline_resets_what_is_still_open,
);

fn echo_4_mib_byte_for_byte(driver: &str) {
    let proxy = quick(driver, &[echo_server()], &[]);
    let data = payload(4 << 20, 42);
    let mut s = connect(proxy.addr());
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.clone();
        thread::spawn(move || {
            w.write_all(&data).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::with_capacity(data.len());
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), data.len(), "length after echo through ringlb");
    assert!(back == data, "echoed bytes differ from the bytes sent");
}

fn client_half_close_keeps_backend_to_client_flowing(driver: &str) {
    // The backend keeps talking after the client has finished sending.
    let backend = serve(|mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap(); // ends only if the client's FIN was forwarded
        let tail = payload(1 << 20, 7);
        s.write_all(&got).unwrap();
        s.write_all(&tail).unwrap();
    });
    let proxy = quick(driver, &[backend], &[]);
    let mut s = connect(proxy.addr());
    s.write_all(b"request").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    let mut want = b"request".to_vec();
    want.extend(payload(1 << 20, 7));
    assert!(
        back == want,
        "client got {} bytes after its half-close, want {}",
        back.len(),
        want.len()
    );
}

fn backend_half_close_keeps_client_to_backend_flowing(driver: &str) {
    let (tx, rx) = mpsc::channel();
    let backend = serve(move |mut s| {
        s.write_all(b"hello").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        tx.send(got).unwrap();
    });
    let proxy = quick(driver, &[backend], &[]);
    let mut s = connect(proxy.addr());
    let mut greeting = Vec::new();
    s.read_to_end(&mut greeting).unwrap(); // EOF: the backend's FIN was forwarded
    assert_eq!(greeting, b"hello");
    let data = payload(2 << 20, 9);
    s.write_all(&data).unwrap(); // the other direction still flows
    s.shutdown(Shutdown::Write).unwrap();
    let got = rx
        .recv_timeout(PATIENCE)
        .expect("backend saw the end of the upload");
    assert!(
        got == data,
        "backend got {} bytes, want {}",
        got.len(),
        data.len()
    );
}

fn thousand_concurrent_connections_stay_intact(driver: &str) {
    raise_nofile();
    let proxy = quick(driver, &[echo_server(), echo_server()], &[]);
    let mut conns: Vec<(TcpStream, Vec<u8>)> = (0..1000u64)
        .map(|i| {
            (
                connect(proxy.addr()),
                payload(1024 + (i as usize % 7) * 100, i + 1),
            )
        })
        .collect();
    for (s, data) in &mut conns {
        s.write_all(data).unwrap();
    }
    for (i, (s, data)) in conns.iter_mut().enumerate() {
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert!(
            back == *data,
            "connection {i} got foreign or corrupted bytes"
        );
    }
}

fn retry_lands_on_the_live_backend(driver: &str) {
    let dead = refused_addr();
    let live = name_server("live");
    let proxy = quick(driver, &[dead, live], &[]);
    // Round robin starts half of these on the dead backend; every one must reach the live one.
    for i in 0..10 {
        assert_eq!(answer(proxy.addr()), "live", "connection {i}");
    }
}

fn all_backends_dead_resets_the_client(driver: &str) {
    let proxy = quick(
        driver,
        &[refused_addr(), refused_addr()],
        &["--connect-timeout", "2s"],
    );
    let started = Instant::now();
    let mut s = connect(proxy.addr());
    let mut buf = [0u8; 16];
    let err = s
        .read(&mut buf)
        .expect_err("the client must see a reset, not data or a clean EOF");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "reset took {:?}",
        started.elapsed()
    );
}

fn connect_timeout_moves_on_to_the_next_backend(driver: &str) {
    // A listener whose accept queue is full drops new SYNs: connecting to it times out.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let black_hole = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..2 {
        if let Ok(s) = TcpStream::connect_timeout(&black_hole, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    let live = name_server("live");
    // One worker, so round robin's first pick is the black hole for the first connection.
    let proxy = quick_with_workers(
        driver,
        1,
        &[black_hole, live],
        &["--connect-timeout", "300ms"],
    );
    let started = Instant::now();
    assert_eq!(answer(proxy.addr()), "live");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "the first attempt should have waited for its deadline, took {took:?}"
    );
}

fn idle_timeout_closes_both_sides(driver: &str) {
    let (tx, rx) = mpsc::channel();
    let backend = serve(move |mut s| {
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        s.write_all(&buf[..n]).unwrap();
        let started = Instant::now();
        let rest = s.read(&mut buf); // must end because ringlb closed the backend side
        tx.send((rest.map_err(|e| e.kind()), started.elapsed()))
            .unwrap();
    });
    let proxy = quick(driver, &[backend], &["--idle-timeout", "400ms"]);
    let mut s = connect(proxy.addr());
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    let quiet_since = Instant::now();
    let n = s.read(&mut buf).expect("client side closed cleanly");
    let waited = quiet_since.elapsed();
    assert_eq!(n, 0, "client side must be closed by the idle timeout");
    assert!(
        waited >= Duration::from_millis(300),
        "closed after only {waited:?}"
    );
    let (backend_end, _) = rx.recv_timeout(PATIENCE).expect("backend side closed");
    assert_eq!(backend_end, Ok(0), "backend side must see end of stream");
}

fn sigterm_drains_in_flight_and_refuses_new(driver: &str) {
    let mut proxy = quick(driver, &[echo_server()], &["--drain-timeout", "20s"]);
    let addr = proxy.addr();
    let mut s = connect(addr);
    let first = payload(64 * 1024, 1);
    s.write_all(&first).unwrap();
    let mut back = vec![0u8; first.len()];
    s.read_exact(&mut back).unwrap();

    proxy.signal(libc::SIGTERM);
    // New connections are refused once the listeners are closed.
    let deadline = Instant::now() + PATIENCE;
    loop {
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
            // Completed by the kernel just before the listener closed, then reset with it.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("unexpected connect error: {e}"),
            Ok(c) => drop(c), // accepted by a listener not yet closed; try again
        }
        assert!(
            Instant::now() < deadline,
            "listener still accepting after SIGTERM"
        );
        thread::yield_now();
    }
    // The connection opened before the signal still works to the end.
    let second = payload(1 << 20, 2);
    s.write_all(&second)
        .unwrap_or_else(|e| panic!("write after SIGTERM: {e}\n{}", proxy.stderr()));
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(
        rest == second,
        "in-flight transfer cut short: {} of {} bytes",
        rest.len(),
        second.len()
    );
    let status = proxy.wait_exit();
    assert!(status.success(), "exit after drain: {status}");
}

/// A transfer still running at the end of `--drain-timeout` is cut short: both peers must see a
/// reset, never an end of stream a client would take for a complete transfer, and the totals
/// logged at exit count the bytes relayed until then.
fn the_drain_deadline_resets_what_is_still_open(driver: &str) {
    // A backend that streams until its stream fails, and reports how it failed.
    let (ended_tx, ended_rx) = mpsc::channel();
    let ended_tx = Mutex::new(ended_tx);
    let backend = serve(move |mut s| {
        let chunk = vec![7u8; 64 * 1024];
        let end = loop {
            if let Err(e) = s.write_all(&chunk) {
                break e.kind();
            }
        };
        let _ = ended_tx.lock().unwrap().send(end);
    });
    let mut proxy = quick_with_workers(driver, 1, &[backend], &["--drain-timeout", "300ms"]);
    let mut s = connect(proxy.addr());
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    while received < 1 << 20 {
        received += s.read(&mut buf).unwrap() as u64;
    }
    proxy.signal(libc::SIGTERM);
    // Keep reading (slowly enough that the transfer is still running at the deadline) until
    // the stream ends.
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => received += n as u64,
            Err(e) => break Err(e.kind()),
        }
        thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "the client must see the cut, not an end of stream, after {received} bytes"
    );
    assert_eq!(
        ended_rx.recv_timeout(PATIENCE),
        Ok(ErrorKind::ConnectionReset),
        "the backend must see a reset too"
    );
    let status = proxy.wait_exit();
    assert!(status.success(), "exit after the drain deadline: {status}");
    proxy.wait_stderr("service totals");
    let log = proxy.stderr();
    assert!(
        log.contains("1 connections still open were reset on both sides"),
        "{log}"
    );
    let totals = log
        .lines()
        .find(|l| l.contains("service totals"))
        .map(without_colours)
        .unwrap_or_else(|| panic!("no totals:\n{log}"));
    let relayed: u64 = totals
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes_to_client="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no bytes_to_client in {totals}"));
    assert!(
        relayed >= received,
        "the totals count what was relayed ({relayed}) at least what the client read ({received})"
    );
}

/// A log line without its ANSI colour sequences (`ESC [ ... m`).
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}
