//! The harness's own accuracy, through real sockets on loopback: what it reports against
//! synthetic backends whose behaviour is known.
//!
//! Tolerances: a latency can never be below the backend's service time (a hard bound);
//! above it, the stated tolerance is 1.5 ms at p50 and 10 ms at p99 (a debug build on a
//! shared 2-core machine: the loopback round trip, the two runtimes' wake-ups and the
//! machine's scheduling). The timing tests run one at a time (a lock), so that they do not
//! load the machine for each other.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use harness::backends::{Backends, Model, Protocol, ServiceTime};
use harness::{run, Load, Mode, Report, Scenario};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Held by each test for its whole run: one load at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn load(target: SocketAddr, scenario: Scenario, mode: Mode, connections: usize) -> Load {
    Load {
        target,
        scenario,
        mode,
        connections,
        threads: 1,
        cpus: Vec::new(),
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        sources: Vec::new(),
        start: None,
        progress: false,
    }
}

fn backend(model: Model, protocol: Protocol) -> Backends {
    Backends::start(LOCALHOST, protocol, &[model]).unwrap()
}

fn constant(ms: u64) -> Model {
    Model::steady(ServiceTime::Constant(Duration::from_millis(ms)))
}

#[test]
fn a_fixed_service_time_is_what_the_percentiles_say() {
    let _alone = alone();
    let backends = backend(constant(2), Protocol::Http);
    for scenario in [Scenario::Rr, Scenario::Cps] {
        let r = run(&load(backends.addrs()[0], scenario, Mode::Closed, 4)).unwrap();
        let l = r.latency_us;
        assert_eq!(r.errors.total(), 0, "{r:?}");
        assert!(r.requests > 500, "{r:?}");
        assert!(l.p50 >= 2_000, "never below the service time: {l:?}");
        assert!(
            l.p50 <= 4_000,
            "{scenario:?} p50 within 2 ms of 2 ms: {l:?}"
        );
        assert!(
            l.p99 <= 12_000,
            "{scenario:?} p99 within 10 ms of 2 ms: {l:?}"
        );
        // A closed loop of 4 connections at ~2 ms a request: ~2,000 answers a second.
        assert!(r.throughput_rps > 500.0, "{r:?}");
    }
}

/// The stall of 200 ms shows in the open loop's p99 (every request due during it waited),
/// and not in the closed loop's, which sent nothing while it waited.
#[test]
fn a_stall_shows_in_an_open_loop_s_p99_and_hides_from_a_closed_loop() {
    let _alone = alone();
    let stalling = Model {
        stall: Some((Duration::from_millis(800), Duration::from_millis(200))),
        ..constant(1)
    };
    let backends = backend(stalling, Protocol::Http);
    let target = backends.addrs()[0];
    let open = run(&load(target, Scenario::Rr, Mode::open(400.0), 4)).unwrap();
    assert!(open.latency_us.max >= 190_000, "{open:?}");
    assert!(
        open.latency_us.p99 >= 100_000,
        "~80 of 600 requests were due during the stall: {open:?}"
    );
    let request_count_ok = (550..=610).contains(&open.requests);
    assert!(request_count_ok, "the timetable's 600: {open:?}");
    drop(backends);
    let backends = backend(
        Model {
            stall: Some((Duration::from_millis(800), Duration::from_millis(200))),
            ..constant(1)
        },
        Protocol::Http,
    );
    let closed = run(&load(backends.addrs()[0], Scenario::Rr, Mode::Closed, 4)).unwrap();
    assert!(
        closed.latency_us.max >= 150_000,
        "the stall is there: {closed:?}"
    );
    assert!(
        closed.latency_us.p99 < 100_000,
        "but only 4 requests waited through it: {closed:?}"
    );
}

#[test]
fn a_dead_target_gives_errors_and_ends_on_time() {
    let _alone = alone();
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    for mode in [Mode::Closed, Mode::open(100.0)] {
        let started = Instant::now();
        let r: Report = run(&load(gone, Scenario::Rr, mode, 2)).unwrap();
        assert_eq!(r.requests, 0, "{r:?}");
        assert!(r.errors.connect > 0, "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    // A backend that dies half way: answers, then errors, and the load still ends.
    let dying = Model {
        dies_at: Some(Duration::from_millis(900)),
        ..constant(1)
    };
    let backends = backend(dying, Protocol::Http);
    let r = run(&load(backends.addrs()[0], Scenario::Rr, Mode::Closed, 2)).unwrap();
    assert!(r.requests > 0 && r.errors.total() > 0, "{r:?}");
}

#[test]
fn udp_requests_are_answered_and_timed() {
    let _alone = alone();
    let backends = backend(constant(1), Protocol::Udp);
    let r = run(&load(
        backends.addrs()[0],
        Scenario::Udp,
        Mode::open(200.0),
        2,
    ))
    .unwrap();
    assert_eq!(r.errors.total(), 0, "{r:?}");
    assert!((280..=310).contains(&r.requests), "{r:?}");
    assert!(r.latency_us.p50 >= 1_000, "{r:?}");
    let json = serde_json::to_value(&r).unwrap();
    for key in ["p50", "p90", "p99", "p999", "max", "mean"] {
        assert!(json["latency_us"][key].is_number(), "{json}");
    }
    let back: Report = serde_json::from_value(json).unwrap();
    assert_eq!(back, r);
}
