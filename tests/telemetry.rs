//! Data-plane telemetry end to end: after real traffic, the histograms, failure reasons, close
//! reasons and affinity counts in `/metrics` (parsed strictly), and the decision log on stdout
//! and in a file, switched at run time, matched line by line against the connections made.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::admin::*;
use support::*;

const DRIVERS: [&str; 2] = ["uring", "epoll"];

fn start(path: &Path, driver: &str, extra: &[&str]) -> Ringlb {
    let mut args = vec![
        "run",
        "--config",
        path.to_str().unwrap(),
        "--workers",
        "2",
        "--io-driver",
        driver,
    ];
    args.extend_from_slice(extra);
    Ringlb::start(&args)
}

/// Sends `len` bytes on a new connection, half-closes, reads the echo to its end; returns the
/// client's port.
fn echo_round_trip(addr: SocketAddr, len: usize) -> u16 {
    let mut s = connect(addr);
    let port = s.local_addr().unwrap().port();
    let data = payload(len, len as u64);
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert!(back == data, "echo of {len} bytes differs");
    port
}

/// Connects to a frontend that resets its clients; returns the client's port.
fn reset_by(addr: SocketAddr) -> u16 {
    let mut s = connect(addr);
    let port = s.local_addr().unwrap().port();
    let mut buf = [0u8; 16];
    assert!(
        !matches!(s.read(&mut buf), Ok(n) if n > 0),
        "{addr} answered"
    );
    port
}

/// Connects to a `named_echo` frontend and reads the backend's name; returns it and the
/// client's port.
fn name_via(addr: SocketAddr) -> (String, u16) {
    let mut s = connect(addr);
    let port = s.local_addr().unwrap().port();
    let name = read_name(&mut s);
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    (name, port)
}

fn service(name: &str) -> [(&'static str, &str); 1] {
    [("service", name)]
}

#[test]
fn histograms_failure_reasons_and_affinity_count_the_traffic_exactly() {
    for driver in DRIVERS {
        histograms_with(driver);
    }
}

fn histograms_with(driver: &str) {
    let echo = echo_server();
    let (a, b) = (named_echo("a"), named_echo("b"));
    let (d1, d2) = (refused_addr(), refused_addr());
    let path = write_config(
        &format!("telemetry-{driver}"),
        &format!(
            "admin: 127.0.0.1:0\nservices:\n  \
             - {{name: web, listen: [\"127.0.0.1:0\"], backends: [{{address: \"{echo}\"}}]}}\n  \
             - {{name: dead, listen: [\"127.0.0.1:0\"], max_connect_attempts: 2, \
                 backends: [{{address: \"{d1}\"}}, {{address: \"{d2}\"}}]}}\n  \
             - {{name: cold, listen: [\"127.0.0.1:0\"], backends: [{{address: \"{echo}\", weight: 0}}]}}\n  \
             - {{name: sticky, listen: [\"127.0.0.1:0\"], session_affinity: client_ip, \
                 backends: [{{address: \"{a}\"}}, {{address: \"{b}\"}}]}}\n  \
             - {{name: idle, listen: [\"127.0.0.1:0\"], idle_timeout: 200ms, \
                 backends: [{{address: \"{echo}\"}}]}}\n"
        ),
    );
    let proxy = start(&path, driver, &[]);
    let admin = admin_addr(&proxy);
    let [web, dead, cold, sticky, idle] = proxy.addrs[..] else {
        panic!("five frontends expected: {:?}", proxy.addrs)
    };

    let sizes = [1usize, 1000, 100_000, 7];
    for len in sizes {
        echo_round_trip(web, len);
    }
    reset_by(dead);
    reset_by(dead);
    reset_by(cold);
    let names: Vec<String> = (0..4).map(|_| name_via(sticky).0).collect();
    assert!(names.iter().all(|n| *n == names[0]), "affinity: {names:?}");
    // The idle service closes a quiet connection after 200 ms: the client sees end of stream.
    let started = Instant::now();
    let mut quiet = connect(idle);
    quiet.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    quiet.read_exact(&mut one).unwrap();
    assert_eq!(
        quiet.read(&mut one).unwrap(),
        0,
        "closed by the idle timeout"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));

    let durations = [
        ("web", 4.0),
        ("dead", 2.0),
        ("cold", 1.0),
        ("sticky", 4.0),
        ("idle", 1.0),
    ];
    let m = scrape_until(admin, "every connection closed and timed", |m| {
        durations.iter().all(|&(svc, n)| {
            histogram(m, "ringlb_connection_duration_seconds", &service(svc))
                .is_some_and(|h| h.count == n)
        })
    });
    let hist = |name: &str, svc: &str| {
        histogram(&m, name, &service(svc)).unwrap_or_else(|| panic!("no {name} for {svc}"))
    };
    let count = |name: &str, svc: &str, label: &str, v: &str| {
        value(&m, name, &[("service", svc), (label, v)])
    };

    // web: four clean round trips.
    let connect_web = hist("ringlb_backend_connect_duration_seconds", "web");
    assert_eq!(connect_web.count, 4.0, "{driver}: {connect_web:?}");
    assert!(connect_web.sum > 0.0);
    let life_web = hist("ringlb_connection_duration_seconds", "web");
    assert!(
        life_web.sum >= connect_web.sum,
        "{life_web:?} vs {connect_web:?}"
    );
    assert_eq!(life_web.buckets.len(), 15, "14 bounds and +Inf");
    assert_eq!(life_web.buckets[0].0, 0.001);
    assert_eq!(connect_web.buckets.len(), 16, "15 bounds and +Inf");
    assert_eq!(connect_web.buckets[0].0, 0.0001);
    let closed = |svc, reason| count("ringlb_connections_closed_total", svc, "reason", reason);
    assert_eq!(closed("web", "eof"), 4.0);
    for reason in ["idle_timeout", "drained", "reset"] {
        assert_eq!(closed("web", reason), 0.0, "{reason}");
    }
    let errors = |svc, reason| count("ringlb_connect_errors_total", svc, "reason", reason);
    for reason in ["refused", "timeout", "unreachable", "other"] {
        assert_eq!(errors("web", reason), 0.0, "{reason}");
    }
    assert_eq!(
        series(
            &m,
            "ringlb_affinity_lookups_total",
            &[("service", "web"), ("result", "hit")]
        ),
        None,
        "no affinity series without affinity"
    );
    assert_eq!(series(&m, "ringlb_udp_flows_active", &service("web")), None);

    // dead: every attempt refused, two attempts per client.
    assert_eq!(
        hist("ringlb_backend_connect_duration_seconds", "dead").count,
        0.0
    );
    assert_eq!(errors("dead", "refused"), 4.0);
    assert_eq!(errors("dead", "timeout"), 0.0);
    assert_eq!(
        count(
            "ringlb_connections_failed_total",
            "dead",
            "reason",
            "connect_failed"
        ),
        2.0
    );
    assert_eq!(
        value(&m, "ringlb_connect_retries_total", &service("dead")),
        2.0
    );
    assert_eq!(closed("dead", "eof"), 0.0, "failures are not relay ends");

    // cold: its only backend has weight 0.
    assert_eq!(
        count(
            "ringlb_connections_failed_total",
            "cold",
            "reason",
            "no_backend"
        ),
        1.0
    );
    assert_eq!(
        hist("ringlb_backend_connect_duration_seconds", "cold").count,
        0.0
    );

    // sticky: the first connection is placed by the scheduler, the next three by affinity.
    let lookups = |result| count("ringlb_affinity_lookups_total", "sticky", "result", result);
    assert_eq!((lookups("miss"), lookups("hit")), (1.0, 3.0), "{driver}");

    // idle: closed by its idle timeout, after at least 200 ms.
    assert_eq!(closed("idle", "idle_timeout"), 1.0);
    assert_eq!(
        value(&m, "ringlb_idle_timeouts_total", &service("idle")),
        1.0
    );
    let life_idle = hist("ringlb_connection_duration_seconds", "idle");
    assert!(life_idle.sum >= 0.2, "{life_idle:?}");
    let under = |h: &Histogram, le: f64| h.buckets.iter().find(|b| b.0 == le).unwrap().1;
    assert_eq!(under(&life_idle, 0.1), 0.0, "{life_idle:?}");
    assert_eq!(under(&life_idle, f64::INFINITY), 1.0);
}

/// Waits for `n` decision log lines on ringlb's stdout and returns them by client port and
/// frontend port (the kernel may give two connections to different frontends one client port).
fn stdout_decisions(proxy: &Ringlb, n: usize) -> HashMap<(u16, u16), Json> {
    (0..n)
        .map(|_| {
            let line = proxy.wait_line("{");
            let json: Json = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("decision line {line:?}: {e}"));
            let frontend = json["frontend"]
                .as_str()
                .and_then(|f| f.parse::<SocketAddr>().ok())
                .unwrap_or_else(|| panic!("no frontend in {json}"))
                .port();
            ((client_port(&json), frontend), json)
        })
        .collect()
}

fn client_port(line: &Json) -> u16 {
    line["client"]
        .as_str()
        .and_then(|c| c.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no client in {line}"))
        .port()
}

/// The fields every line has, and their types.
fn assert_well_formed(line: &Json) {
    let time = line["time"].as_str().unwrap_or_else(|| panic!("{line}"));
    assert!(
        time.len() == 27 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "RFC 3339 with microseconds: {time}"
    );
    assert_eq!(line["protocol"], "tcp", "{line}");
    assert!(
        line["duration_seconds"].as_f64().is_some_and(|d| d >= 0.0),
        "{line}"
    );
    assert!(
        line.get("datagrams_to_backend").is_none(),
        "TCP has no datagrams"
    );
    for key in [
        "candidates",
        "attempts",
        "bytes_to_backend",
        "bytes_to_client",
    ] {
        assert!(line[key].is_u64(), "{key} in {line}");
    }
}

#[test]
fn the_decision_log_matches_the_traffic_and_switches_at_run_time() {
    for driver in DRIVERS {
        decision_log_with(driver);
    }
}

fn decision_log_with(driver: &str) {
    let echo = echo_server();
    let (a, b) = (named_echo("a"), named_echo("b"));
    let (d1, d2) = (refused_addr(), refused_addr());
    let path = write_config(
        &format!("decisions-{driver}"),
        &format!(
            "admin: 127.0.0.1:0\nservices:\n  \
             - {{name: web, listen: [\"127.0.0.1:0\"], backends: [{{address: \"{echo}\"}}]}}\n  \
             - {{name: sticky, listen: [\"127.0.0.1:0\"], scheduler: wrr, session_affinity: client_ip, \
                 backends: [{{address: \"{a}\"}}, {{address: \"{b}\"}}]}}\n  \
             - {{name: dead, listen: [\"127.0.0.1:0\"], max_connect_attempts: 2, \
                 backends: [{{address: \"{d1}\"}}, {{address: \"{d2}\"}}]}}\n  \
             - {{name: cold, listen: [\"127.0.0.1:0\"], backends: [{{address: \"{echo}\", weight: 0}}]}}\n"
        ),
    );
    let proxy = start(&path, driver, &[]);
    let admin = admin_addr(&proxy);
    let [web, sticky, dead, cold] = proxy.addrs[..] else {
        panic!("four frontends expected: {:?}", proxy.addrs)
    };

    // Off by default, towards stdout.
    let status = get_json(admin, "/decision-log");
    assert_eq!(status["enabled"], false, "{status}");
    assert_eq!(status["destination"], "stdout");
    let unlogged = echo_round_trip(web, 3);

    let on = json_of(admin, "POST", "/decision-log?enabled=true");
    assert_eq!(on["enabled"], true, "{on}");
    let mut sizes = HashMap::new();
    for len in [5usize, 70_000] {
        sizes.insert(echo_round_trip(web, len), len);
    }
    let (first_name, first) = name_via(sticky);
    let (second_name, second) = name_via(sticky);
    assert_eq!(first_name, second_name);
    let pinned = if first_name == "a" { a } else { b };
    let failed = reset_by(dead);
    let refused = reset_by(cold);

    let lines = stdout_decisions(&proxy, 6);
    assert!(
        !lines.contains_key(&(unlogged, web.port())),
        "logged while off"
    );
    for (port, len) in &sizes {
        let line = &lines[&(*port, web.port())];
        assert_well_formed(line);
        assert_eq!(line["service"], "web", "{line}");
        assert_eq!(line["client"], format!("127.0.0.1:{port}"));
        assert_eq!(line["frontend"], web.to_string());
        assert_eq!(line["scheduler"], "rr");
        assert_eq!(line["candidates"], 1);
        assert_eq!(line["affinity"], "off");
        assert_eq!(line["backend"], echo.to_string());
        assert_eq!(line["attempts"], 1);
        assert_eq!(line["bytes_to_backend"], *len);
        assert_eq!(line["bytes_to_client"], *len);
        assert_eq!(line["close"], "eof");
    }
    for (port, affinity) in [(first, "miss"), (second, "hit")] {
        let line = &lines[&(port, sticky.port())];
        assert_well_formed(line);
        assert_eq!(line["service"], "sticky", "{line}");
        assert_eq!(line["scheduler"], "wrr");
        assert_eq!(line["candidates"], 2);
        assert_eq!(line["affinity"], affinity, "{line}");
        assert_eq!(line["backend"], pinned.to_string());
        assert_eq!(line["bytes_to_client"], 2, "the name and a newline");
        assert_eq!(line["close"], "eof");
    }
    let line = &lines[&(failed, dead.port())];
    assert_well_formed(line);
    assert_eq!(line["service"], "dead");
    assert_eq!(line["backend"], Json::Null, "{line}");
    assert_eq!(line["attempts"], 2);
    assert_eq!(line["candidates"], 2);
    assert_eq!(line["close"], "connect_failed");
    let line = &lines[&(refused, cold.port())];
    assert_well_formed(line);
    assert_eq!(line["service"], "cold");
    assert_eq!(line["backend"], Json::Null);
    assert_eq!(line["attempts"], 0);
    assert_eq!(line["candidates"], 0);
    assert_eq!(line["close"], "no_backend");

    // Off, one connection, on again: only the last connection is logged.
    let off = json_of(admin, "POST", "/decision-log?enabled=false");
    assert_eq!(off["enabled"], false);
    let quiet = echo_round_trip(web, 4);
    json_of(admin, "POST", "/decision-log?enabled=true");
    let last = echo_round_trip(web, 6);
    let next = stdout_decisions(&proxy, 1);
    assert!(
        next.contains_key(&(last, web.port())),
        "{next:?} (quiet port {quiet})"
    );

    // The writer counts a batch once its write returned: a moment after the line is out.
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        let status = get_json(admin, "/decision-log");
        if status["written"] == 7 || Instant::now() > deadline {
            break status;
        }
        thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status["written"], 7, "{status}");
    assert_eq!(status["dropped"], 0);
    assert_eq!(status["write_errors"], 0);
    let m = scrape(admin);
    assert_eq!(value(&m, "ringlb_decision_log_enabled", &[]), 1.0);
    assert_eq!(value(&m, "ringlb_decision_log_lines_total", &[]), 7.0);
    for reason in ["queue_full", "write_error"] {
        assert_eq!(
            value(
                &m,
                "ringlb_decision_log_dropped_total",
                &[("reason", reason)]
            ),
            0.0
        );
    }

    // What the switch refuses.
    assert_eq!(request(admin, "POST", "/decision-log").status, 400);
    assert_eq!(
        request(admin, "POST", "/decision-log?enabled=yes").status,
        400
    );
    let cross = request_with(
        admin,
        "POST",
        "/decision-log?enabled=false",
        "Origin: http://example.com\r\n",
    );
    assert_eq!(cross.status, 403, "{cross:?}");
    let put = request(admin, "PUT", "/decision-log?enabled=false");
    assert_eq!(put.status, 405);
    assert!(put.headers.contains("allow: get, head, post"), "{put:?}");
    assert_eq!(request(admin, "POST", "/metrics").status, 405);
    assert_eq!(get_json(admin, "/decision-log")["enabled"], true);
}

/// The lines of a decision log file (only whole lines).
fn file_lines(path: &Path) -> Vec<Json> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Waits until `path` holds `n` lines.
fn wait_lines(path: &Path, n: usize) -> Vec<Json> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines = file_lines(path);
        if lines.len() >= n {
            assert_eq!(lines.len(), n, "{lines:?}");
            return lines;
        }
        assert!(Instant::now() < deadline, "{path:?} never had {n} lines");
        thread::sleep(Duration::from_millis(5));
    }
}

fn log_path(tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ringlb-test-{}-{tag}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn a_decision_log_file_is_written_from_the_start_and_reopened_on_sighup() {
    for driver in DRIVERS {
        log_file_with(driver);
    }
}

fn log_file_with(driver: &str) {
    let echo = echo_server();
    let path = log_path(&format!("decisions-{driver}"));
    let flag = path.to_str().unwrap();
    let proxy = quick(
        driver,
        &[echo],
        &[
            "--admin",
            "127.0.0.1:0",
            "--no-telemetry",
            "--decision-log",
            flag,
        ],
    );
    let admin = admin_addr(&proxy);
    let first = echo_round_trip(proxy.addr(), 10);
    let lines = wait_lines(&path, 1);
    assert_eq!(client_port(&lines[0]), first);
    assert_eq!(lines[0]["service"], "default");
    assert_eq!(lines[0]["bytes_to_backend"], 10);
    let status = get_json(admin, "/decision-log");
    assert_eq!(status["enabled"], true);
    assert_eq!(status["destination"], flag);

    // Without telemetry the histograms and data-plane counters are gone; the log works.
    let m = scrape_until(admin, "the line counted", |m| {
        series(m, "ringlb_decision_log_lines_total", &[]) == Some(1.0)
    });
    let default = service("default");
    assert!(histogram(&m, "ringlb_connection_duration_seconds", &default).is_none());
    assert!(series(
        &m,
        "ringlb_connect_errors_total",
        &[("service", "default"), ("reason", "refused")]
    )
    .is_none());
    assert_eq!(
        value(&m, "ringlb_connections_accepted_total", &default),
        1.0
    );

    // logrotate: move the file away, SIGHUP, and the next line starts a new file.
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    proxy.signal(libc::SIGHUP);
    // Logged by the control loop after the signal thread asked for the reopen.
    proxy.wait_stderr("nothing to reload");
    let second = echo_round_trip(proxy.addr(), 20);
    let lines = wait_lines(&path, 1);
    assert_eq!(client_port(&lines[0]), second);
    assert_eq!(file_lines(&rotated).len(), 1, "the old file is left alone");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&rotated);
}

#[test]
fn a_decision_log_that_cannot_be_opened_is_a_startup_error() {
    let err = Ringlb::try_start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:1",
        "--decision-log",
        "/nonexistent-dir/decisions.log",
    ])
    .err()
    .expect("an unwritable decision log must fail the start");
    assert_eq!(err.status.code(), Some(1), "{}", err.stderr);
    assert!(
        err.stderr
            .contains("cannot open the decision log /nonexistent-dir/decisions.log"),
        "{}",
        err.stderr
    );
}

#[test]
fn a_connection_cut_by_a_backend_drain_ends_drained_not_idle() {
    for driver in DRIVERS {
        drained_with(driver);
    }
}

fn drained_with(driver: &str) {
    let (a, b) = (named_echo("a"), named_echo("b"));
    let yaml = |backends: &str| {
        format!(
            "admin: 127.0.0.1:0\nservices:\n  \
             - {{name: web, listen: [\"127.0.0.1:0\"], backends: [{backends}]}}\n"
        )
    };
    let both = format!("{{address: \"{a}\"}}, {{address: \"{b}\"}}");
    let path = write_config(&format!("drain-{driver}"), &yaml(&both));
    let proxy = start(
        &path,
        driver,
        &["--backend-drain-timeout", "50ms", "--decision-log", "-"],
    );
    let admin = admin_addr(&proxy);
    let mut held = connect(proxy.addr());
    let port = held.local_addr().unwrap().port();
    let name = read_name(&mut held);
    let keep = if name == "a" { b } else { a };
    replace_file(&path, &yaml(&format!("{{address: \"{keep}\"}}")));
    assert_eq!(proxy.wait_line("reloaded "), "reloaded version=2");
    // Cut short at the drain deadline: a reset, not an end of stream.
    let mut rest = Vec::new();
    let cut = held.read_to_end(&mut rest).map_err(|e| e.kind());
    assert_eq!(cut, Err(std::io::ErrorKind::ConnectionReset), "{driver}");
    let line = &stdout_decisions(&proxy, 1)[&(port, proxy.addr().port())];
    assert_eq!(line["close"], "drained", "{line}");
    let m = scrape_until(admin, "the drained connection counted", |m| {
        series(
            m,
            "ringlb_connections_closed_total",
            &[("service", "web"), ("reason", "drained")],
        ) == Some(1.0)
    });
    assert_eq!(
        value(&m, "ringlb_idle_timeouts_total", &service("web")),
        0.0
    );
}

/// UDP flows: affinity hits and misses are counted, and each flow that ends writes one decision
/// line with its datagrams, bytes and close reason.
#[test]
fn udp_flows_count_affinity_and_write_decision_lines() {
    for driver in DRIVERS {
        udp_flows_with(driver);
    }
}

fn udp_flows_with(driver: &str) {
    let backend = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = backend.recv_from(&mut buf) {
            let _ = backend.send_to(&buf[..n], from);
        }
    });
    let path = write_config(
        &format!("udp-telemetry-{driver}"),
        &format!(
            "admin: 127.0.0.1:0\nservices:\n  - name: dns\n    protocol: udp\n    \
             listen: [\"127.0.0.1:0\"]\n    idle_timeout: 300ms\n    \
             session_affinity: client_ip\n    backends:\n      - address: \"{backend_addr}\"\n"
        ),
    );
    let proxy = start(&path, driver, &["--decision-log", "-"]);
    let admin = admin_addr(&proxy);
    let to = proxy.addr();
    let ask = |c: &std::net::UdpSocket, msg: &[u8]| {
        c.send_to(msg, to).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = c.recv_from(&mut buf).expect("answer");
        assert_eq!(&buf[..n], msg);
    };
    let first = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    first.set_read_timeout(Some(PATIENCE)).unwrap();
    let second = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    second.set_read_timeout(Some(PATIENCE)).unwrap();
    for msg in [&b"one"[..], b"two", b"three"] {
        ask(&first, msg);
    }
    // Same client IP, another port: another flow, pinned by affinity.
    ask(&second, b"four");

    // Both flows end on their idle timeout and log a line each.
    let lines = stdout_decisions(&proxy, 2);
    let a = &lines[&(first.local_addr().unwrap().port(), to.port())];
    let b = &lines[&(second.local_addr().unwrap().port(), to.port())];
    for line in [a, b] {
        assert_eq!(line["protocol"], "udp", "{driver}: {line}");
        assert_eq!(line["close"], "idle_timeout", "{driver}: {line}");
        assert_eq!(line["backend"], backend_addr.to_string());
        assert_eq!(line["attempts"], 1);
        assert_eq!(line["frontend"], to.to_string());
    }
    assert_eq!(a["affinity"], "miss", "{driver}: {a}");
    assert_eq!(b["affinity"], "hit", "{driver}: {b}");
    assert_eq!(a["datagrams_to_backend"], 3);
    assert_eq!(a["datagrams_to_client"], 3);
    assert_eq!(a["bytes_to_backend"], 11);
    assert_eq!(b["datagrams_to_backend"], 1);
    assert_eq!(b["bytes_to_client"], 4);

    let m = scrape(admin);
    let svc = [("service", "dns")];
    assert_eq!(
        value(
            &m,
            "ringlb_affinity_lookups_total",
            &[("service", "dns"), ("result", "miss")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "ringlb_affinity_lookups_total",
            &[("service", "dns"), ("result", "hit")]
        ),
        1.0
    );
    assert_eq!(value(&m, "ringlb_udp_flows_opened_total", &svc), 2.0);
    assert_eq!(value(&m, "ringlb_udp_flows_active", &svc), 0.0);
    let _ = std::fs::remove_file(&path);
}
