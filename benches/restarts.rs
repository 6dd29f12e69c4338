//! What clients see while ringlb is upgraded, restarted or crashes, through the release
//! binary: the load of the upgrade tests (600 new TCP connections a second with a request
//! each, 20 echo streams of a second each, 8 UDP clients) through
//! - 10 in-place upgrades (`SIGUSR2` and `ringlb upgrade` in turn),
//! - 5 takeovers by a new `ringlb run` on the same handover socket (a DaemonSet's new pod),
//! - 5 `SIGKILL`s of the worker,
//! - 10 restarts the way there was before the master: a second process with `--share-port`,
//!   then SIGTERM to the first.
//!
//! `cargo bench --bench restarts` prints one row per way; bounded in time.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use support::load::{Load, Report, Spec};
use support::restart::{kill_worker, share_port_restart, upgrade, Ask};
use support::*;

/// How long the load runs between two events.
const BETWEEN: Duration = Duration::from_millis(500);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("restarts is a benchmark: run it with cargo bench --bench restarts");
        return;
    }
    raise_nofile();
    println!(
        "{:<28} {:>8} {:>7} {:>7} {:>8} {:>8} {:>9} {:>8} {:>7} {:>12} {:>12}",
        "way",
        "requests",
        "failed",
        "streams",
        "s.failed",
        "udp.ok",
        "udp.unans",
        "udp.moved",
        "conn/s",
        "max connect",
        "max answer"
    );
    row("10 upgrades (in place)", upgrades(10));
    row("5 takeovers (new master)", takeovers(5));
    row("5 worker SIGKILLs", kills(5));
    row("10 --share-port restarts", share_port_restarts(10));
}

fn row(way: &str, r: Report) {
    println!(
        "{:<28} {:>8} {:>7} {:>7} {:>8} {:>8} {:>9} {:>8} {:>7.0} {:>12.1?} {:>12.1?}",
        way,
        r.requests.ok,
        r.requests.failures.len(),
        r.streams.ok,
        r.streams.failures.len(),
        r.udp.ok,
        r.udp.failures.len(),
        r.udp.moves.len(),
        r.requests.ok as f64 / r.elapsed.as_secs_f64(),
        r.requests.longest_connect,
        r.requests.longest_answer,
    );
    let mut kinds: Vec<&str> = r
        .requests
        .failures
        .iter()
        .chain(&r.streams.failures)
        .map(|f| f.what.as_str())
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    if !kinds.is_empty() {
        println!("{:<28} failures: {}", "", kinds.join(", "));
    }
}

/// A config file with a TCP echo service and a UDP service (two backends, round robin) on
/// fixed free loopback ports, so a second process can name the same ones.
fn config(tag: &str) -> (std::path::PathBuf, SocketAddr, SocketAddr) {
    let tcp = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = format!(
        "services:\n  - name: echo\n    listen: [\"{tcp}\"]\n    \
         backends: [{{address: \"{}\"}}]\n  - name: dns\n    protocol: udp\n    \
         scheduler: rr\n    listen: [\"{udp}\"]\n    \
         backends: [{{address: \"{}\"}}, {{address: \"{}\"}}]\n",
        echo_server(),
        udp_named("a"),
        udp_named("b"),
    );
    (write_config(tag, &yaml), tcp, udp)
}

fn load(tcp: SocketAddr, udp: SocketAddr) -> Load {
    let mut spec = Spec::echo(tcp, 600);
    spec.streams = 20;
    spec.udp = Some(udp);
    spec.udp_clients = 8;
    let load = Load::start(&spec);
    std::thread::sleep(BETWEEN);
    load
}

fn run_args(path: &std::path::Path) -> Vec<String> {
    ["run", "--config", path.to_str().unwrap(), "--workers", "2"]
        .map(String::from)
        .to_vec()
}

fn upgrades(n: usize) -> Report {
    let (path, tcp, udp) = config("bench-upgrades");
    let args = run_args(&path);
    let proxy = Ringlb::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let load = load(tcp, udp);
    let mut worker = proxy.worker_pid();
    for i in 0..n {
        let ask = if i % 2 == 0 {
            Ask::Signal
        } else {
            Ask::Command
        };
        worker = upgrade(&proxy, worker, ask);
        std::thread::sleep(BETWEEN);
    }
    load.stop()
}

fn takeovers(n: usize) -> Report {
    let (path, tcp, udp) = config("bench-takeovers");
    let socket = test_handover_socket();
    let mut args = run_args(&path);
    args.extend(["--handover-socket".to_owned(), socket]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut old = Ringlb::start(&args);
    let load = load(tcp, udp);
    for _ in 0..n {
        let new = Ringlb::start(&args);
        new.wait_line("upgraded worker=");
        old.signal(libc::SIGTERM);
        assert!(old.wait_exit().success(), "{}", old.stderr());
        old = new;
        std::thread::sleep(BETWEEN);
    }
    load.stop()
}

fn kills(n: usize) -> Report {
    let (path, tcp, udp) = config("bench-kills");
    let args = run_args(&path);
    let proxy = Ringlb::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let load = load(tcp, udp);
    let mut worker = proxy.worker_pid();
    let mut longest = Duration::ZERO;
    for _ in 0..n {
        // Past the master's crash-loop guard (a new worker at most once a second).
        std::thread::sleep(BETWEEN * 3);
        let (next, crash) = kill_worker(&proxy, worker);
        worker = next;
        longest = longest.max(crash.ready - crash.killed);
    }
    println!("(longest from a SIGKILL to the next worker's ready line: {longest:.1?})");
    load.stop()
}

fn share_port_restarts(n: usize) -> Report {
    let (path, tcp, udp) = config("bench-share-port");
    let args = run_args(&path);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proxy = Ringlb::start(&args);
    let load = load(tcp, udp);
    for _ in 0..n {
        proxy = share_port_restart(proxy, &args);
        std::thread::sleep(BETWEEN);
    }
    load.stop()
}
