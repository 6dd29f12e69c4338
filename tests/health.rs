//! Active health checks through real sockets: a backend that refuses, one that accepts and
//! never answers, one that resets at once, each taken out of the rotation after `fall`
//! failed checks and put back after `rise` passed ones.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::admin::{admin_addr, scrape, value};
use support::*;

const HEALTHY: u8 = 0;
const HANGS: u8 = 1;
const RESETS: u8 = 2;

/// A backend named `name` on `listener`: a connection starting with `GET ` is a health check,
/// answered as `mode` says (200, never, or a reset); any other is a client, answered with
/// the name.
fn backend(name: &'static str, listener: TcpListener, mode: Arc<AtomicU8>) {
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mode = Arc::clone(&mode);
            std::thread::spawn(move || {
                let mut first = [0u8; 512];
                let Ok(n) = s.read(&mut first) else { return };
                if !first[..n].starts_with(b"GET ") {
                    let _ = s.write_all(name.as_bytes());
                    return;
                }
                match mode.load(Ordering::Relaxed) {
                    HEALTHY => {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                    }
                    HANGS => std::thread::sleep(PATIENCE),
                    _ => {
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    }
                }
            });
        }
    });
}

/// Which backend a new connection reaches.
fn reach(front: SocketAddr) -> String {
    let mut s = TcpStream::connect(front).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"hi\n").unwrap();
    let _ = s.shutdown(Shutdown::Write);
    let mut name = String::new();
    let _ = s.read_to_string(&mut name);
    name
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn failing_backends_leave_the_rotation_after_fall_checks_and_return_after_rise() {
    let good = TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = TcpListener::bind("127.0.0.1:0").unwrap();
    let (good_addr, bad_addr) = (good.local_addr().unwrap(), bad.local_addr().unwrap());
    backend("good", good, Arc::new(AtomicU8::new(HEALTHY)));
    let mode = Arc::new(AtomicU8::new(HANGS));
    backend("bad", bad, Arc::clone(&mode));
    let proxy = quick(
        "uring",
        &[good_addr, bad_addr],
        &[
            "--health-check",
            "http:/health",
            "--health-interval",
            "50ms",
            "--health-timeout",
            "100ms",
            "--fall",
            "2",
            "--rise",
            "2",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = admin_addr(&proxy);
    let up = |backend: SocketAddr| {
        let b = backend.to_string();
        value(
            &scrape(admin),
            "ringlb_backend_up",
            &[("service", "default"), ("backend", &b)],
        )
    };
    let bad_label = bad_addr.to_string();
    for (failing, how) in [(HANGS, "no answer within"), (RESETS, "HTTP")] {
        mode.store(failing, Ordering::Relaxed);
        wait_until("the failing backend is down", || up(bad_addr) == 0.0);
        proxy.wait_stderr(how);
        assert_eq!(up(good_addr), 1.0);
        for _ in 0..20 {
            assert_eq!(
                reach(proxy.addr()),
                "good",
                "a down backend takes no connection"
            );
        }
        let config = support::admin::get_json(admin, "/config");
        let states: Vec<_> = config["services"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["address"].as_str().unwrap().to_owned(),
                    e["state"].clone(),
                )
            })
            .collect();
        assert!(
            states.contains(&(bad_label.clone(), "down".into())),
            "{states:?}"
        );
        let stats = support::admin::get_json(admin, "/stats");
        let listed = stats["services"][0]["backends"].as_array().unwrap();
        let bad_row = listed.iter().find(|b| b["address"] == bad_label.as_str());
        assert_eq!(
            bad_row.map(|b| b["state"].clone()),
            Some("down".into()),
            "{stats}"
        );
        // It comes back: after `rise` passed checks, round robin reaches it again.
        mode.store(HEALTHY, Ordering::Relaxed);
        wait_until("the backend is up again", || up(bad_addr) == 1.0);
        let reached: Vec<String> = (0..4).map(|_| reach(proxy.addr())).collect();
        assert!(reached.iter().any(|n| n == "bad"), "{reached:?}");
    }
    proxy.wait_stderr("backend up");
    let marks = [("service", "default"), ("backend", bad_label.as_str())];
    let downs = value(&scrape(admin), "ringlb_backend_marked_down_total", &marks);
    assert_eq!(downs, 2.0, "down once when it hung, once when it reset");
}

#[test]
fn a_refusing_backend_goes_down_with_tcp_checks_and_all_down_resets_clients() {
    let gone = refused_addr();
    let log = decision_log("refusing");
    let proxy = quick(
        "epoll",
        &[gone],
        &[
            "--health-check",
            "tcp",
            "--health-interval",
            "50ms",
            "--fall",
            "1",
            "--decision-log",
            log.to_str().unwrap(),
        ],
    );
    proxy.wait_stderr("backend down");
    assert!(proxy.stderr().contains("connect:"), "{}", proxy.stderr());
    // Every backend down: the client is reset at once, as with none eligible.
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 8];
    let got = s.read(&mut buf);
    assert!(
        got.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{got:?}"
    );
    // The backend comes back on its port: up again after `rise` (2) connects.
    let back = TcpListener::bind(gone).unwrap();
    proxy.wait_stderr("backend up");
    drop(back);
    // Both changes are in the decision log, beside the flows.
    let events = backend_events(&log, 2);
    assert_eq!(events[0]["event"], "down", "{events:?}");
    assert_eq!(events[0]["backend"], gone.to_string().as_str());
    assert!(events[0]["reason"].as_str().unwrap().contains("connect"));
    assert_eq!(events[1]["event"], "up", "{events:?}");
}

/// A decision log file for this test process.
fn decision_log(tag: &str) -> std::path::PathBuf {
    let name = format!("ringlb-test-{}-{tag}-decisions.jsonl", std::process::id());
    let path = std::env::temp_dir().join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// The backend lines of the decision log at `path`, once there are `n` of them.
fn backend_events(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let read = || -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("event").is_some())
            .collect()
    };
    wait_until("the backend's changes are logged", || read().len() >= n);
    read()
}

#[test]
fn the_probe_keys_fit_their_kind_of_check() {
    check_fails_saying(
        "probe-keys",
        "services:\n  - name: web\n    listen: [\"127.0.0.1:8080\"]\n    \
         health_check: tcp\n    health_status: \"200-299\"\n    \
         backends: [{address: \"127.0.0.1:9\"}]\n  - name: api\n    \
         listen: [\"127.0.0.1:8081\"]\n    health_check: \"http:/\"\n    \
         health_expect: \"+PONG\"\n    health_status: \"299-200\"\n    \
         backends: [{address: \"127.0.0.1:9\"}]\n",
        &[
            "services[0].health_status: only with health_check: http:PATH",
            "services[1].health_expect: only with health_check: tcp",
            "services[1].health_status: \"299-200\" is not a status or a range of them",
        ],
    );
}

#[test]
fn the_outlier_keys_are_checked_with_located_errors() {
    check_fails_saying(
        "outlier-keys",
        "services:\n  - name: web\n    listen: [\"127.0.0.1:8080\"]\n    eject_after: 1000\n    \
         backends: [{address: \"127.0.0.1:9\"}]\n  - name: db\n    \
         listen: [\"127.0.0.1:5432\"]\n    eject_time: 10s\n    \
         backends: [{address: \"127.0.0.1:9\"}]\n  - name: dns\n    protocol: udp\n    \
         listen: [\"127.0.0.1:5353\"]\n    eject_after: 2\n    \
         backends: [{address: \"127.0.0.1:53\"}]\n",
        &[
            ":4:18: services[0].eject_after: must be between 0 (off) and 100, got 1000",
            "services[1].eject_time: only with eject_after",
            "services[2].eject_after: outlier detection is for TCP services only",
        ],
    );
}

#[test]
fn the_health_keys_are_checked_with_located_errors() {
    check_fails_saying(
        "health-keys",
        "services:\n  - name: web\n    listen: [\"127.0.0.1:8080\"]\n    \
         health_check: \"http:health\"\n    rise: 0\n    on_marked_down: drop\n    \
         backends: [{address: \"127.0.0.1:9\"}]\n  - name: db\n    \
         listen: [\"127.0.0.1:5432\"]\n    fall: 2\n    on_marked_down: keep\n    \
         backends: [{address: \"127.0.0.1:9\"}]\n",
        &[
            ":4:19: services[0].health_check: \"http:health\" is not a health check",
            "services[0].rise: must be between 1 and 100, got 0",
            "services[0].on_marked_down: \"drop\": use keep or shutdown-sessions",
            "services[1].fall: only with health_check (tcp or http:PATH)",
            "services[1].on_marked_down: only with health_check (tcp or http:PATH)",
        ],
    );
}

/// A backend that accepts every connection and resets it at once.
fn resetting() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    });
    addr
}

/// Passive outlier detection: a backend that resets every connection is ejected after
/// `--eject-after` failures in a row seen by the workers, takes no connection while ejected,
/// is readmitted when its time is up, and is ejected again for longer.
#[test]
fn a_resetting_backend_is_ejected_after_consecutive_failures_and_readmitted_in_time() {
    let good = name_server("good");
    let bad = resetting();
    let log = decision_log("ejections");
    let proxy = quick(
        "uring",
        &[good, bad],
        &[
            "--eject-after",
            "3",
            "--eject-time",
            "300ms",
            "--max-eject-percent",
            "50",
            "--admin",
            "127.0.0.1:0",
            "--decision-log",
            log.to_str().unwrap(),
        ],
    );
    let admin = admin_addr(&proxy);
    let bad_label = bad.to_string();
    let ejected = || {
        let labels = [("service", "default"), ("backend", bad_label.as_str())];
        value(&scrape(admin), "ringlb_backend_ejected", &labels)
    };
    let answer_of = || {
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).map(|_| text)
    };
    // Round robin alternates: the bad backend's 3rd reset in a row ejects it.
    let mut failed = 0;
    while ejected() == 0.0 {
        if answer_of().is_err() {
            failed += 1;
        }
        assert!(failed <= 3, "ejected after 3 failures in a row");
    }
    assert_eq!(failed, 3);
    proxy.wait_stderr("backend ejected");
    for _ in 0..20 {
        assert_eq!(
            answer_of().unwrap(),
            "good",
            "an ejected backend takes no connection"
        );
    }
    // Its time is up: readmitted, it fails again, and the second ejection is longer.
    wait_until("readmitted", || ejected() == 0.0);
    proxy.wait_stderr("backend readmitted after its ejection");
    while ejected() == 0.0 {
        let _ = answer_of();
    }
    // The second ejection lasts twice as long as the first.
    proxy.wait_stderr("600ms");
    let labels = [("service", "default"), ("backend", bad_label.as_str())];
    let ejections = value(&scrape(admin), "ringlb_backend_ejections_total", &labels);
    assert_eq!(ejections, 2.0);
    // The first three: the second ejection may be over by now.
    let events: Vec<_> = backend_events(&log, 3)
        .iter()
        .take(3)
        .map(|e| (e["event"].clone(), e["ejection_seconds"].clone()))
        .collect();
    assert_eq!(
        events,
        [
            ("ejected".into(), 0.3.into()),
            ("readmitted".into(), serde_json::Value::Null),
            ("ejected".into(), 0.6.into()),
        ]
    );
}

/// Kubernetes manifests opt in with annotations: a selector-less Service whose hand-written
/// endpoints are checked over HTTP, the one that hangs taken down.
#[test]
fn a_services_annotations_turn_health_checks_and_outlier_detection_on() {
    let good = TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = TcpListener::bind("127.0.0.1:0").unwrap();
    let (good_addr, bad_addr) = (good.local_addr().unwrap(), bad.local_addr().unwrap());
    backend("good", good, Arc::new(AtomicU8::new(HEALTHY)));
    backend("bad", bad, Arc::new(AtomicU8::new(HANGS)));
    let octet = (std::process::id() % 200) as u8 + 20;
    let cluster = format!("127.92.{octet}.1");
    let subsets = endpoint_subsets(&[good_addr, bad_addr]);
    let manifests = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: vms\n  namespace: prod\n  annotations:\n    \
         ringlb.io/health-check: \"http:/health\"\n    ringlb.io/health-interval: 50ms\n    \
         ringlb.io/eject-after: \"5\"\nspec:\n  clusterIP: {cluster}\n  ports:\n  - name: http\n    \
         port: 80\n---\napiVersion: v1\nkind: Endpoints\nmetadata:\n  name: vms\n  namespace: prod\n\
         subsets:\n{subsets}"
    );
    let path = write_config("health-manifests", &manifests);
    let proxy = Ringlb::start(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = admin_addr(&proxy);
    let state_of_bad = || {
        let config = support::admin::get_json(admin, "/config");
        let service = &config["services"][0];
        assert_eq!(service["health_check"]["check"], "http:/health", "{config}");
        assert_eq!(service["health_check"]["interval"], "50ms", "{config}");
        service["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == bad_addr.to_string().as_str())
            .map(|e| e["state"].as_str().unwrap_or_default().to_owned())
            .unwrap()
    };
    wait_until("the hanging endpoint is down", || state_of_bad() == "down");
    let front: SocketAddr = format!("{cluster}:80").parse().unwrap();
    for _ in 0..10 {
        assert_eq!(reach(front), "good");
    }
    check_fails_saying(
        "health-annotations",
        &manifests.replace("eject-after: \"5\"", "eject-after: \"many\""),
        &[":9:28: Service prod/vms: metadata.annotations[\"ringlb.io/eject-after\"]: \"many\": failures in a row, 0 (off) to 100"],
    );
}

/// A backend on `listener` whose health checks (`GET `) answer as `mode` says, and which
/// echoes every other connection until its client closes.
fn echoing(listener: TcpListener, mode: Arc<AtomicU8>) {
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mode = Arc::clone(&mode);
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                let Ok(n) = s.read(&mut buf) else { return };
                if !buf[..n].starts_with(b"GET ") {
                    let mut n = n;
                    while n > 0 && s.write_all(&buf[..n]).is_ok() {
                        n = s.read(&mut buf).unwrap_or(0);
                    }
                    return;
                }
                if mode.load(Ordering::Relaxed) == HEALTHY {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                } else {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
            });
        }
    });
}

/// `on_marked_down`: with `shutdown-sessions` a backend marked down has its open connections
/// reset at once; with `keep` (the default) they go on.
#[test]
fn a_backend_marked_down_keeps_its_sessions_unless_asked_to_shut_them() {
    for (driver, on_down) in [("uring", "shutdown-sessions"), ("epoll", "keep")] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(HEALTHY));
        echoing(listener, Arc::clone(&mode));
        let proxy = quick(
            driver,
            &[addr],
            &[
                "--health-check",
                "http:/health",
                "--health-interval",
                "50ms",
                "--fall",
                "1",
                "--on-marked-down",
                on_down,
            ],
        );
        let mut session = connect(proxy.addr());
        let echo = |s: &mut TcpStream, what: &[u8]| {
            s.write_all(what)?;
            let mut back = vec![0u8; what.len()];
            s.read_exact(&mut back)?;
            assert_eq!(back, what);
            Ok::<_, std::io::Error>(())
        };
        echo(&mut session, b"before").unwrap();
        mode.store(RESETS, Ordering::Relaxed);
        proxy.wait_stderr("backend down");
        if on_down == "keep" {
            echo(&mut session, b"after").expect("a kept session goes on");
            continue;
        }
        let mut buf = [0u8; 8];
        let got = session.read(&mut buf);
        assert!(
            matches!(&got, Ok(0))
                || got
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "the session is shut: {got:?}"
        );
    }
}
