//! The cost of active health checks: one service of 10,000 backends (loopback listeners of
//! this process, which accept and close every connection as a server does), through the
//! release binary, with `health_check: tcp` at two intervals and without checks; the CPU time
//! of ringlb's processes (master and worker) over the same window, as a share of one core.
//!
//! Beside each, the kernel's floor for the same checks: a thread of this process doing the
//! same connects at the same rate with nothing else (a blocking connect, `SO_LINGER` 0, close),
//! its own CPU time over the window. On loopback the kernel runs both ends of a handshake in
//! the connecting thread, so the floor holds the backend's half too; no checker can cost less.
//!
//! `cargo bench --bench health_checks`; bounded in time (about a minute and a half).

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use support::*;

const BACKENDS: usize = 10_000;
/// How long the checks run before the window, and the window.
const WARM_UP: Duration = Duration::from_secs(4);
const WINDOW: Duration = Duration::from_secs(10);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("health_checks is a benchmark: run it with cargo bench --bench health_checks");
        return;
    }
    raise_nofile();
    let listeners: Vec<TcpListener> = (0..BACKENDS).map(|_| listener()).collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    accept_all(listeners);
    println!(
        "{:<32} {:>10} {:>16} {:>12}",
        "checks", "checks/s", "CPU % of a core", "us / check"
    );
    let off = measure("none", &addrs, "", 0.0);
    for (interval, secs) in [("2s", 2.0), ("10s", 10.0)] {
        let rate = BACKENDS as f64 / secs;
        let keys = format!("    health_check: tcp\n    health_interval: {interval}\n");
        let on = measure(&format!("tcp every {interval}"), &addrs, &keys, rate);
        row("  ringlb, minus no checks", rate, on - off);
        row("  kernel floor, same connects", rate, floor(&addrs, rate));
    }
}

/// One line of the table: the share of a core, and what it makes per check.
fn row(name: &str, rate: f64, share: f64) {
    let per_check = if rate > 0.0 {
        share / 100.0 / rate * 1e6
    } else {
        0.0
    };
    println!("{name:<32} {rate:>10.0} {share:>15.2}% {per_check:>12.1}");
}

/// A loopback listener with a deep accept queue.
fn listener() -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(4096).unwrap();
    s.set_nonblocking(true).unwrap();
    s.into()
}

/// Accepts and closes every connection to `listeners`, as servers do, for the life of the
/// process (one thread, polling every listener; what arrives between two passes waits in
/// its queue).
fn accept_all(listeners: Vec<TcpListener>) {
    std::thread::spawn(move || loop {
        for l in &listeners {
            while l.accept().is_ok() {}
        }
        std::thread::sleep(Duration::from_millis(20));
    });
}

/// The kernel's floor: `rate` blocking connects per second over `addrs` (each closed with a
/// reset), paced every 10 ms, on a thread of this process; its CPU share over the window.
fn floor(addrs: &[SocketAddr], rate: f64) -> f64 {
    let addrs = addrs.to_vec();
    let thread = std::thread::spawn(move || {
        let tick = Duration::from_millis(10);
        let per_tick = (rate * tick.as_secs_f64()).round() as usize;
        let mut next = addrs.iter().cycle();
        let started = Instant::now();
        let cpu_before = harness::usage::thread_cpu();
        let mut at = started;
        while started.elapsed() < WINDOW {
            for addr in next.by_ref().take(per_tick) {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                if s.connect(&(*addr).into()).is_ok() {
                    let _ = s.set_linger(Some(Duration::ZERO));
                }
            }
            at += tick;
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
        }
        (harness::usage::thread_cpu() - cpu_before).as_secs_f64() / started.elapsed().as_secs_f64()
            * 100.0
    });
    thread.join().unwrap()
}

/// Runs ringlb over `addrs` with `keys` added to the service (`rate` checks a second);
/// prints and returns its CPU share of one core over the window.
fn measure(name: &str, addrs: &[SocketAddr], keys: &str, rate: f64) -> f64 {
    let backends: Vec<String> = addrs
        .iter()
        .map(|a| format!("      - address: \"{a}\"\n"))
        .collect();
    let yaml = format!(
        "services:\n  - name: many\n    listen: [\"127.0.0.1:0\"]\n{keys}    backends:\n{}",
        backends.concat()
    );
    let path = write_config("bench-health", &yaml);
    let proxy = Ringlb::start(&["run", "--config", path.to_str().unwrap(), "--workers", "1"]);
    std::thread::sleep(WARM_UP);
    // The master and its worker.
    let pid = u32::try_from(proxy.pid()).expect("a process ID");
    let before = harness::usage::process_cpu_seconds(pid);
    let started = Instant::now();
    std::thread::sleep(WINDOW);
    let after = harness::usage::process_cpu_seconds(pid);
    let share = (after - before) / started.elapsed().as_secs_f64() * 100.0;
    row(name, rate, share);
    drop(proxy);
    share
}
