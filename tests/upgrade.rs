//! Upgrades and crashes lose no connection: a load of new TCP connections, long-lived streams
//! and UDP clients runs through in-place upgrades (`SIGUSR2`, `ringlb upgrade`), `SIGKILL`s
//! of the worker, a second ringlb taking over on the handover socket, and upgrades that fail.
//! Counts, not timings: what failed, and when it was attempted relative to each event.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use support::load::{Load, Report, Spec};
use support::restart::{kill_worker, upgrade, Ask, Crash};
use support::*;

/// A TCP echo service and a UDP service over two named backends (`a`, `b`) by round robin.
fn services(tcp: SocketAddr, udp: [SocketAddr; 2], admin: &str) -> String {
    format!(
        "{admin}services:\n  - name: echo\n    listen: [\"127.0.0.1:0\"]\n    \
         backends: [{{address: \"{tcp}\"}}]\n  - name: dns\n    protocol: udp\n    \
         scheduler: rr\n    listen: [\"127.0.0.1:0\"]\n    \
         backends: [{{address: \"{}\"}}, {{address: \"{}\"}}]\n",
        udp[0], udp[1]
    )
}

/// ringlb from `yaml` (written to a file tagged `tag`), without watching it: every change
/// to the file reaches it through an upgrade only.
fn start(tag: &str, yaml: &str) -> (Ringlb, std::path::PathBuf) {
    let path = write_config(tag, yaml);
    let proxy = Ringlb::start(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--no-watch",
        "--workers",
        "2",
    ]);
    assert_eq!(proxy.addrs.len(), 2, "{:?}", proxy.before_ready);
    (proxy, path)
}

/// The load of these tests on `proxy`: 600 new connections a second with a request each, 20
/// echo streams of a second each, 8 UDP clients.
fn load_on(proxy: &Ringlb) -> Load {
    let mut spec = Spec::echo(proxy.addrs[0], 600);
    spec.streams = 20;
    spec.udp = Some(proxy.addrs[1]);
    spec.udp_clients = 8;
    Load::start(&spec)
}

/// Lets the load run on the current worker for a while: new connections, streams that start
/// on it, UDP flows it owns.
fn let_it_run() {
    std::thread::sleep(Duration::from_millis(300));
}

fn assert_load_got_through(report: &Report) {
    assert!(report.requests.ok > 0 && report.streams.ok >= 20 && report.udp.ok > 0);
}

#[test]
fn ten_upgrades_lose_no_connection_no_byte_and_move_no_udp_client() {
    let udp = [udp_named("a"), udp_named("b")];
    let (mut proxy, _) = start("upgrades", &services(echo_server(), udp, ""));
    let load = load_on(&proxy);
    let mut worker = proxy.worker_pid();
    for i in 0..10 {
        let_it_run();
        let ask = if i % 2 == 0 {
            Ask::Signal
        } else {
            Ask::Command
        };
        worker = upgrade(&proxy, worker, ask);
    }
    let_it_run();
    let report = load.stop();
    println!("through 10 upgrades:\n{}", report.summary());
    report.assert_nothing_lost();
    assert_load_got_through(&report);
    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit().success(), "{}", proxy.stderr());
}

/// How long before a crash an attempt may have started and still be lost to it: a stream
/// (a second long) or a request the killed worker was relaying.
const IN_FLIGHT: Duration = Duration::from_millis(1500);

#[test]
fn killed_workers_are_replaced_on_the_same_sockets_and_no_later_connection_is_refused() {
    let udp = [udp_named("a"), udp_named("b")];
    let (mut proxy, _) = start("kills", &services(echo_server(), udp, ""));
    let load = load_on(&proxy);
    let mut worker = proxy.worker_pid();
    let mut crashes: Vec<Crash> = Vec::new();
    for _ in 0..5 {
        // Longer than a stream, so each attempt can be lost to one crash only; and than the
        // master's crash-loop guard (a new worker at most once a second), so each is restarted
        // at once.
        for _ in 0..4 {
            let_it_run();
        }
        let (next, crash) = kill_worker(&proxy, worker);
        worker = next;
        crashes.push(crash);
    }
    let_it_run();
    let report = load.stop();
    let longest_death = crashes.iter().map(|c| c.dead - c.killed).max().unwrap();
    let longest_restart = crashes.iter().map(|c| c.ready - c.dead).max().unwrap();
    println!(
        "through 5 worker kills (longest kill to reaped: {longest_death:?}, reaped to the \
         next worker ready: {longest_restart:?}):\n{}",
        report.summary()
    );
    // What the killed worker relayed may be lost; nothing attempted once it is dead.
    let lost_to = |c: &Crash| (c.killed - IN_FLIGHT, c.dead);
    for (kind, tally) in [("request", &report.requests), ("stream", &report.streams)] {
        let after: Vec<_> = tally
            .failures
            .iter()
            .filter(|f| {
                !crashes
                    .iter()
                    .any(|c| (lost_to(c).0..lost_to(c).1).contains(&f.at))
            })
            .collect();
        assert!(after.is_empty(), "{kind}s failed after a crash: {after:?}");
    }
    // UDP: at most the datagram each client had in flight, per crash.
    for (i, c) in crashes.iter().enumerate() {
        let until = crashes.get(i + 1).map_or_else(Instant::now, |n| n.killed);
        let unanswered = report.udp.failures_in(c.killed - IN_FLIGHT, until);
        assert!(unanswered.len() <= 8, "crash {i}: {unanswered:?}");
    }
    let first = crashes[0].killed - IN_FLIGHT;
    assert!(report
        .udp
        .failures_in(Instant::now() - report.elapsed, first)
        .is_empty());
    assert_load_got_through(&report);
    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit().success(), "{}", proxy.stderr());
}

#[test]
fn a_second_ringlb_on_the_handover_socket_takes_the_sockets_over() {
    let echo = echo_server();
    let to = echo.to_string();
    let socket = test_handover_socket();
    let args = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to,
        "--workers",
        "2",
        "--handover-socket",
        &socket,
    ];
    let mut old = Ringlb::start(&args);
    let mut spec = Spec::echo(old.addr(), 600);
    spec.streams = 20;
    let load = Load::start(&spec);
    let_it_run();
    // The new pod of a DaemonSet: same command line, same socket.
    let mut new = Ringlb::start(&args);
    assert_eq!(new.addr(), old.addr(), "the same socket");
    let took = new.wait_line("upgraded worker=");
    assert_eq!(pid_of(&took.replace("worker=", "pid=")), new.worker_pid());
    old.wait_stderr("handed over");
    let_it_run();
    let report = load.stop();
    println!("through a takeover:\n{}", report.summary());
    report.assert_nothing_lost();
    assert!(report.requests.ok > 0 && report.streams.ok >= 20);
    // The old one waits for its own SIGTERM (the kubelet's), then leaves what it handed on.
    old.signal(libc::SIGTERM);
    assert!(old.wait_exit().success(), "{}", old.stderr());
    assert_eq!(answer_echo(new.addr()), "still here");
    // The new one now answers on the socket: a later upgrade goes to it.
    let worker = upgrade(&new, new.worker_pid(), Ask::Command);
    assert_eq!(parent_of(worker), Some(new.pid()));
    new.signal(libc::SIGTERM);
    assert!(new.wait_exit().success());
}

fn answer_echo(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = connect(addr);
    s.write_all(b"still here").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// `ringlb upgrade` against `proxy`: exit code and stderr.
fn upgrade_fails(proxy: &Ringlb) -> String {
    let out = ringlb_command(&["upgrade", "--handover-socket", proxy.handover_socket()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    println!("ringlb upgrade said: {stderr}");
    stderr
}

#[test]
fn an_upgrade_that_cannot_start_leaves_the_old_worker_serving_and_says_why() {
    let udp = [udp_named("a"), udp_named("b")];
    let echo = echo_server();
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = format!("admin: \"{}\"\n", free.local_addr().unwrap());
    drop(free);
    let (mut proxy, path) = start("failing", &services(echo, udp, &admin));
    let worker = proxy.worker_pid();
    let load = load_on(&proxy);

    // A config the new process cannot read.
    let bad = services(echo, udp, &admin).replace(&echo.to_string(), "nowhere:port");
    std::fs::write(&path, bad).unwrap();
    let why = upgrade_fails(&proxy);
    assert!(
        why.contains(path.to_str().unwrap()),
        "names the file: {why}"
    );
    assert!(why.contains("keeps serving"), "{why}");

    // An admin port another process holds.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = format!("admin: \"{}\"\n", taken.local_addr().unwrap());
    std::fs::write(&path, services(echo, udp, &admin)).unwrap();
    let why = upgrade_fails(&proxy);
    assert!(why.contains("address already in use"), "{why}");
    assert!(
        why.contains(&taken.local_addr().unwrap().to_string()),
        "{why}"
    );

    assert_eq!(parent_of(worker), Some(proxy.pid()), "the old worker runs");
    let_it_run();
    let report = load.stop();
    println!("through 2 failed upgrades:\n{}", report.summary());
    report.assert_nothing_lost();

    // Fixed, the upgrade goes through.
    drop(taken);
    std::fs::write(&path, services(echo, udp, "")).unwrap();
    upgrade(&proxy, worker, Ask::Command);
    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit().success(), "{}", proxy.stderr());
}

/// Upgrades while the workers of earlier upgrades still drain (each holds a connection
/// open): each upgrade goes through, and every draining worker keeps relaying.
#[test]
fn upgrades_while_earlier_workers_still_drain() {
    use std::io::{Read, Write};
    let echo = echo_server();
    let proxy = quick("uring", &[echo], &[]);
    let mut held = Vec::new();
    let mut worker = proxy.worker_pid();
    for round in 0..4u8 {
        let mut s = connect(proxy.addr());
        s.write_all(&[round]).unwrap();
        let mut back = [0u8; 1];
        s.read_exact(&mut back).unwrap();
        held.push(s);
        worker = upgrade(&proxy, worker, Ask::Command);
        // Let the old worker settle into its drain before the next upgrade.
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every held connection still works through its draining worker.
    for (round, s) in held.iter_mut().enumerate() {
        let byte = u8::try_from(round).unwrap() + 10;
        s.write_all(&[byte]).unwrap();
        let mut back = [0u8; 1];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back[0], byte);
    }
}
