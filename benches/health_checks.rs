//! The cost of active health checks: one service of 10,000 backends (loopback listeners of
//! this process), through the release binary, with `health_check: tcp` at two intervals and
//! without checks; the CPU time of ringlb's processes (master and worker) over the same
//! window, as a share of one core.
//!
//! `cargo bench --bench health_checks`; bounded in time (about a minute).

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
    println!(
        "{:<32} {:>14} {:>16}",
        "checks", "checks/s", "CPU % of a core"
    );
    let off = measure("none", &addrs, "");
    for interval in ["2s", "10s"] {
        let keys = format!("    health_check: tcp\n    health_interval: {interval}\n");
        let on = measure(&format!("tcp every {interval}"), &addrs, &keys);
        println!("{:<32} {:>14} {:>15.2}%", "", "", on - off);
        println!("{:>48}  (minus no checks)", "");
    }
    drop(listeners);
}

/// A loopback listener with a deep accept queue: checks connect and close, nothing accepts.
fn listener() -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(4096).unwrap();
    s.into()
}

/// Runs ringlb over `addrs` with `keys` added to the service; prints and returns its CPU
/// share of one core over the window.
fn measure(name: &str, addrs: &[SocketAddr], keys: &str) -> f64 {
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
    let pids = [proxy.pid(), proxy.worker_pid()];
    let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    let started = Instant::now();
    std::thread::sleep(WINDOW);
    let after: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    let secs = started.elapsed().as_secs_f64();
    // SAFETY: sysconf takes a constant and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let share = (after - before) as f64 / hz / secs * 100.0;
    let per_second = if keys.contains("10s") {
        BACKENDS as f64 / 10.0
    } else if keys.is_empty() {
        0.0
    } else {
        BACKENDS as f64 / 2.0
    };
    println!("{name:<32} {per_second:>14.0} {share:>15.2}%");
    drop(proxy);
    share
}

/// utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the name: state is field 0, utime 11, stime 12.
    field(11) + field(12)
}
