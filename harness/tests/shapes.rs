//! The shapes of a load beyond one rate, through real sockets on loopback: rate steps, the
//! timeline (throughput over time) lined up with a backend's death, and bulk streams.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use harness::backends::{Backends, Model, Protocol, ServiceTime};
use harness::{run, Load, LoadError, Mode, Scenario};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Held by each test for its whole run: one load at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn instant() -> Model {
    Model::steady(ServiceTime::Constant(Duration::ZERO))
}

#[test]
fn rate_steps_each_get_their_timetable_and_their_own_numbers() {
    let _alone = alone();
    let backends = Backends::start(LOCALHOST, Protocol::Http, &[instant()]).unwrap();
    let load = Load {
        mode: Mode::Open {
            rates: vec![100.0, 300.0],
        },
        connections: 4,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        ..Load::new(backends.addrs()[0], Scenario::Rr)
    };
    let r = run(&load).unwrap();
    assert_eq!(r.errors.total(), 0, "{r:?}");
    assert_eq!(r.duration_s, 2.0, "two steps of a second");
    let steps: Vec<(Option<f64>, u64)> = r.steps.iter().map(|s| (s.rate, s.requests)).collect();
    assert_eq!(steps.len(), 2, "{r:?}");
    assert_eq!(steps[0].0, Some(100.0));
    assert!((95..=101).contains(&steps[0].1), "{steps:?}");
    assert!((290..=301).contains(&steps[1].1), "{steps:?}");
    assert_eq!(r.requests, steps[0].1 + steps[1].1);
    // The timeline follows the steps: a tenth of a second each, 10 then 30 answered.
    let t = &r.timeline;
    assert_eq!(t.answered.len(), 20, "{t:?}");
    let first: u64 = t.answered[1..9].iter().sum();
    let second: u64 = t.answered[11..19].iter().sum();
    assert!((70..=90).contains(&first), "{t:?}");
    assert!((220..=260).contains(&second), "{t:?}");
}

#[test]
fn a_death_lined_up_with_the_load_shows_in_the_timeline_where_it_happened() {
    let _alone = alone();
    let dying = Model {
        dies_at: Some(Duration::from_millis(600)),
        ..instant()
    };
    let backends = Backends::start(LOCALHOST, Protocol::Http, &[dying]).unwrap();
    // The backends started earlier (as a proxy in front of them would start in between);
    // their clock is moved to when the load's warm-up ends.
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now() + Duration::from_millis(100);
    let warmup = Duration::from_millis(200);
    backends.set_epoch(start + warmup);
    let load = Load {
        mode: Mode::open(200.0),
        connections: 2,
        duration: Duration::from_millis(1200),
        warmup,
        timeout: Duration::from_millis(500),
        start: Some(start),
        ..Load::new(backends.addrs()[0], Scenario::Rr)
    };
    let r = run(&load).unwrap();
    let t = &r.timeline;
    assert!(
        t.answered[..5].iter().all(|&n| n > 0),
        "answers until 0.6 s: {t:?}"
    );
    assert!(t.answered[7..].iter().all(|&n| n == 0), "none after: {t:?}");
    assert!(
        t.failed[7..].iter().sum::<u64>() > 50,
        "errors after: {t:?}"
    );
    assert_eq!(t.failed[..5].iter().sum::<u64>(), 0, "{t:?}");
}

#[test]
fn bulk_streams_carry_bytes_to_a_sink_and_refuse_a_rate() {
    let _alone = alone();
    let backends = Backends::start(LOCALHOST, Protocol::Sink, &[instant()]).unwrap();
    let load = Load {
        connections: 2,
        duration: Duration::from_millis(800),
        warmup: Duration::from_millis(200),
        ..Load::new(backends.addrs()[0], Scenario::Bulk)
    };
    let r = run(&load).unwrap();
    assert_eq!(r.errors.total(), 0, "{r:?}");
    assert_eq!(r.bytes, r.requests * harness::CHUNK as u64);
    // Loopback carries gigabits a second even in a debug build.
    assert!(r.throughput_gbps > 0.1, "{r:?}");
    let paced = Load {
        mode: Mode::open(100.0),
        ..load
    };
    assert!(matches!(run(&paced), Err(LoadError::PacedBulk)));
}

/// A server that ends keep-alive connections by saying so (`Connection: close` on every third
/// answer, as NGINX does after `keepalive_requests`) costs a reconnect, not an error.
#[test]
fn a_keep_alive_connection_the_server_closes_by_saying_so_is_no_error() {
    use std::io::{Read, Write};
    let _alone = alone();
    let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let target = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                for n in 1.. {
                    // One request per read: the load's GETs are small and sent one at a time.
                    if !matches!(s.read(&mut buf), Ok(k) if k > 0) {
                        return;
                    }
                    let last = n % 3 == 0;
                    let head = if last { "connection: close\r\n" } else { "" };
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n{head}\r\nok\n");
                    if s.write_all(answer.as_bytes()).is_err() || last {
                        return;
                    }
                }
            });
        }
    });
    let load = Load {
        connections: 2,
        duration: Duration::from_millis(500),
        warmup: Duration::ZERO,
        ..Load::new(target, Scenario::Rr)
    };
    let r = run(&load).unwrap();
    assert_eq!(r.errors.total(), 0, "{r:?}");
    assert!(r.requests > 30, "{r:?}");
    let connections = accepted.load(std::sync::atomic::Ordering::Relaxed) as u64;
    assert!(
        connections * 3 >= r.requests,
        "a new connection every third request: {r:?}"
    );
}
