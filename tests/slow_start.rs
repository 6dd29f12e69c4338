//! Slow start through real sockets: a backend that comes back after its health checks took
//! it down ramps its share up over `--slow-start`, as `/config` and the connections it
//! takes both show, and has its full share once the ramp is over.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::admin::{admin_addr, get_json};
use support::*;

/// Answers every connection on `listener` with `name`.
fn answer_on(listener: TcpListener, name: &'static str) {
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.write_all(name.as_bytes());
        }
    });
}

/// The backend a new connection reaches.
fn reach(front: SocketAddr) -> String {
    let mut s = TcpStream::connect(front).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut name = String::new();
    let _ = s.read_to_string(&mut name);
    name
}

/// How many of `n` new connections reach `name`.
fn share(front: SocketAddr, name: &str, n: usize) -> usize {
    (0..n).filter(|_| reach(front) == name).count()
}

#[test]
fn a_backend_that_comes_back_ramps_its_share_over_the_slow_start() {
    let steady = TcpListener::bind("127.0.0.1:0").unwrap();
    let steady_addr = steady.local_addr().unwrap();
    answer_on(steady, "steady");
    let back = refused_addr();
    let proxy = quick(
        "uring",
        &[steady_addr, back],
        &[
            "--scheduler",
            "wrr",
            "--health-check",
            "tcp",
            "--health-interval",
            "50ms",
            "--fall",
            "1",
            "--rise",
            "1",
            "--slow-start",
            "4s",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = admin_addr(&proxy);
    let endpoint = || {
        let config = get_json(admin, "/config");
        assert_eq!(config["services"][0]["slow_start"], "4s", "{config}");
        config["services"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == back.to_string().as_str())
            .cloned()
            .unwrap()
    };
    proxy.wait_stderr("backend down");
    answer_on(TcpListener::bind(back).unwrap(), "back");
    proxy.wait_stderr("backend up");
    // Just back: a sixteenth of its weight at first, far less than the half it will have.
    let early = share(proxy.addr(), "back", 34);
    assert!(early < 17, "{early} of 34 while ramping");
    // The ramp shows in /config, step by step, until it is over.
    let deadline = Instant::now() + Duration::from_secs(4) + PATIENCE;
    let mut seen = Vec::new();
    loop {
        let e = endpoint();
        assert_eq!(e["state"], "active", "{e}");
        match e["slow_start_percent"].as_u64() {
            Some(p) => {
                assert!(
                    seen.last().is_none_or(|&last| p >= last),
                    "{seen:?} then {p}"
                );
                seen.push(p);
            }
            None => break,
        }
        assert!(Instant::now() < deadline, "the ramp never ended: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        seen.iter().any(|&p| p > 0 && p < 100),
        "part way up at some point: {seen:?}"
    );
    // Over: `wrr` with equal weights alternates again.
    assert_eq!(share(proxy.addr(), "back", 34), 17);
}

#[test]
fn slow_start_needs_a_scheduler_that_weighs_backends() {
    check_fails_saying(
        "slow-start-keys",
        "services:\n  - name: web\n    listen: [\"127.0.0.1:8080\"]\n    slow_start: 30s\n    \
         backends: [{address: \"127.0.0.1:9\"}]\n  - name: api\n    scheduler: wlc\n    \
         listen: [\"127.0.0.1:8081\"]\n    slow_start: soon\n    \
         backends: [{address: \"127.0.0.1:9\"}]\n",
        &[
            ":4:17: services[0].slow_start: slow start ramps weights, and scheduler rr does not weigh backends: use wrr, wlc, sed or nq",
            "services[1].slow_start: ",
        ],
    );
    let out = ringlb_command(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
        "--slow-start",
        "10s",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--scheduler rr does not weigh backends: use wrr, wlc, sed or nq"),
        "{stderr}"
    );
}
