//! The admin HTTP API end to end: real traffic through ringlb, then `/metrics` (parsed with a
//! Prometheus text-format parser), `/stats`, `/config` across a reload, `/readyz` through a
//! drain, and the startup errors of a bad or taken admin address.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::admin::*;
use support::*;

/// A config file of this test process; `admin: 127.0.0.1:0` unless `yaml` says otherwise.
fn config_file(tag: &str, yaml: &str) -> PathBuf {
    write_config(&format!("admin-{tag}"), yaml)
}

/// Writes `yaml` to `path` the way config management does: a new file renamed over the old.
fn replace_file(path: &Path, yaml: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start(path: &Path, driver: &str) -> Ringlb {
    Ringlb::start(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--workers",
        "2",
        "--io-driver",
        driver,
    ])
}

/// Sends `len` bytes on a new connection, half-closes, and reads the echo to its end.
fn echo_round_trip(addr: SocketAddr, len: usize) {
    let mut s = connect(addr);
    let data = payload(len, len as u64);
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert!(back == data, "echo of {len} bytes differs");
}

#[test]
fn metrics_count_the_traffic_exactly() {
    for driver in ["uring", "epoll"] {
        metrics_count_the_traffic_exactly_with(driver);
    }
}

fn metrics_count_the_traffic_exactly_with(driver: &str) {
    let echo = echo_server();
    let dead = refused_addr();
    let path = config_file(
        &format!("traffic-{driver}"),
        &format!(
            "admin: 127.0.0.1:0\nservices:\n  \
             - {{name: web, listen: [\"127.0.0.1:0\"], backends: [{{address: \"{echo}\"}}]}}\n  \
             - {{name: dead, listen: [\"127.0.0.1:0\"], backends: [{{address: \"{dead}\"}}]}}\n"
        ),
    );
    let proxy = start(&path, driver);
    let admin = admin_addr(&proxy);
    let (web, dead_frontend) = (proxy.addrs[0], proxy.addrs[1]);

    let sizes = [1usize, 1000, 65_536, 300_000, 7];
    for &len in &sizes {
        echo_round_trip(web, len);
    }
    let total: usize = sizes.iter().sum();
    // Every attempt at the dead service is refused: the client is reset.
    let mut s = connect(dead_frontend);
    let mut buf = [0u8; 16];
    assert!(
        !matches!(s.read(&mut buf), Ok(n) if n > 0),
        "dead service answered"
    );

    let web_l = [("service", "web")];
    let m = scrape_until(admin, "every connection closed and counted", |m| {
        series(m, "ringlb_connections_active", &web_l) == Some(0.0)
            && series(m, "ringlb_connections_accepted_total", &web_l) == Some(5.0)
            && series(
                m,
                "ringlb_connections_failed_total",
                &[("service", "dead"), ("reason", "connect_failed")],
            ) == Some(1.0)
    });
    let bytes = |direction| {
        value(
            &m,
            "ringlb_relayed_bytes_total",
            &[("service", "web"), ("direction", direction)],
        )
    };
    assert_eq!(bytes("client_to_backend"), total as f64, "{driver}");
    assert_eq!(bytes("backend_to_client"), total as f64, "{driver}");
    assert_eq!(value(&m, "ringlb_connect_attempts_total", &web_l), 5.0);
    assert_eq!(value(&m, "ringlb_connect_retries_total", &web_l), 0.0);
    assert_eq!(value(&m, "ringlb_idle_timeouts_total", &web_l), 0.0);
    let failed = |service, reason| {
        value(
            &m,
            "ringlb_connections_failed_total",
            &[("service", service), ("reason", reason)],
        )
    };
    assert_eq!(failed("web", "connect_failed"), 0.0);
    assert_eq!(failed("web", "no_backend"), 0.0);
    assert_eq!(failed("dead", "no_backend"), 0.0);
    assert_eq!(
        value(
            &m,
            "ringlb_connections_accepted_total",
            &[("service", "dead")]
        ),
        1.0
    );

    let echo_l = [("service", "web"), ("backend", &*echo.to_string())];
    assert_eq!(value(&m, "ringlb_backend_active_connections", &echo_l), 0.0);
    assert_eq!(
        value(&m, "ringlb_backend_inactive_connections", &echo_l),
        0.0
    );
    assert_eq!(value(&m, "ringlb_backend_weight", &echo_l), 1.0);
    assert_eq!(value(&m, "ringlb_backend_overloaded", &echo_l), 0.0);
    assert_eq!(
        value(
            &m,
            "ringlb_service_info",
            &[("service", "web"), ("protocol", "tcp"), ("scheduler", "rr")]
        ),
        1.0
    );
    assert_eq!(value(&m, "ringlb_table_version", &[]), 1.0);
    assert_eq!(
        value(&m, "ringlb_config_reloads_total", &[("result", "success")]),
        0.0
    );
    assert_eq!(
        value(&m, "ringlb_config_reloads_total", &[("result", "failure")]),
        0.0
    );
    let swapped = value(&m, "ringlb_table_last_swap_timestamp_seconds", &[]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        swapped <= now && swapped > now - 600.0,
        "{swapped} vs {now}"
    );
    let build = m
        .samples
        .iter()
        .find(|s| s.metric == "ringlb_build_info")
        .expect("build info");
    assert_eq!(build.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));

    // The same counts in /stats.
    let stats = get_json(admin, "/stats");
    let web_stats = &stats["services"][0];
    assert_eq!(web_stats["name"], "web");
    assert_eq!(web_stats["accepted"], 5);
    assert_eq!(web_stats["bytes_to_backend"], total);
    assert_eq!(web_stats["bytes_to_client"], total);
    assert_eq!(stats["services"][1]["connect_failed"], 1);
}

#[test]
fn stats_come_as_json_or_as_an_aligned_text_table() {
    let (a, b) = (echo_server(), echo_server());
    let path = config_file(
        "stats",
        &format!(
            "admin: 127.0.0.1:0\nservices:\n  - name: web\n    listen: [\"127.0.0.1:0\"]\n    \
             scheduler: wlc\n    backends:\n      - {{address: \"{a}\", weight: 3}}\n      \
             - {{address: \"{b}\", weight: 0}}\n"
        ),
    );
    let proxy = start(&path, "auto");
    let admin = admin_addr(&proxy);
    // One connection held open: the backend counts it active.
    let mut held = connect(proxy.addr());
    held.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).unwrap();

    let stats = get_json(admin, "/stats");
    assert_eq!(stats["version"], 1);
    let web = &stats["services"][0];
    assert_eq!(web["scheduler"], "wlc");
    assert_eq!(web["accepted"], 1);
    assert_eq!(web["active"], 1);
    let backends = web["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    assert_eq!(backends[0]["address"], a.to_string());
    assert_eq!(backends[0]["state"], "active");
    assert_eq!(backends[0]["active"], 1);
    assert_eq!(backends[0]["inactive"], 0);
    assert_eq!(backends[1]["state"], "inactive", "weight 0");
    assert_eq!(backends[1]["active"], 0);
    assert_eq!(
        get_json(admin, "/stats?format=json"),
        get_json(admin, "/stats"),
        "json is the default"
    );

    let reply = request(admin, "GET", "/stats?format=text");
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers.contains("content-type: text/plain"),
        "{reply:?}"
    );
    let text = reply.body;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "Table version 1", "{text}");
    let header = lines
        .iter()
        .position(|l| l.starts_with("Service  Prot"))
        .unwrap();
    let row: Vec<&str> = lines[header + 1].split_whitespace().collect();
    assert_eq!(&row[..5], ["web", "TCP", "wlc", "1", "1"], "{text}");
    let be_header = lines
        .iter()
        .position(|l| l.starts_with("Service  RemoteAddress:Port"))
        .unwrap();
    let first: Vec<&str> = lines[be_header + 1].split_whitespace().collect();
    assert_eq!(
        first,
        ["web", &a.to_string(), "3", "active", "1", "0"],
        "{text}"
    );
    let second: Vec<&str> = lines[be_header + 2].split_whitespace().collect();
    assert_eq!(
        second,
        ["web", &b.to_string(), "0", "inactive", "0", "0"],
        "{text}"
    );
    // Columns are aligned: every cell starts where its header does.
    for (head, rows) in [(header, 1), (be_header, 2)] {
        for row in &lines[head + 1..=head + rows] {
            assert_eq!(word_starts(row), word_starts(lines[head]), "{text}");
        }
    }

    assert_eq!(request(admin, "GET", "/stats?format=xml").status, 400);
    drop(held);
}

/// Where each word of `line` begins.
fn word_starts(line: &str) -> Vec<usize> {
    let bytes = line.as_bytes();
    (0..bytes.len())
        .filter(|&i| bytes[i] != b' ' && (i == 0 || bytes[i - 1] == b' '))
        .collect()
}

#[test]
fn config_shows_the_live_table_and_follows_a_reload() {
    let (a, b, c) = (echo_server(), echo_server(), echo_server());
    let dir = std::env::temp_dir().join(format!("ringlb-admin-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ringlb.yaml");
    let web = |backends: &str| {
        format!(
            "admin: 127.0.0.1:0\nservices:\n  - name: web\n    listen: [\"127.0.0.1:0\"]\n    \
             scheduler: mh\n    scheduler_flags: [mh-port]\n    session_affinity: client_ip\n    \
             session_affinity_timeout: 10m\n    connect_timeout: 2s\n    idle_timeout: 15m\n    \
             max_connect_attempts: 2\n    backends:\n{backends}"
        )
    };
    std::fs::write(
        &path,
        web(&format!(
            "      - {{address: \"{a}\", weight: 2, max_connections: 100}}\n      - {{address: \"{b}\"}}\n"
        )),
    )
    .unwrap();
    let proxy = start(&path, "auto");
    let admin = admin_addr(&proxy);
    assert_eq!(get(admin, "/readyz"), "ready\n");
    assert_eq!(get(admin, "/healthz"), "ok\n");

    let config = get_json(admin, "/config");
    assert_eq!(config["version"], 1);
    let svc = &config["services"][0];
    assert_eq!(svc["name"], "web");
    assert_eq!(svc["protocol"], "tcp");
    assert_eq!(
        svc["frontends"],
        serde_json::json!([proxy.addr().to_string()])
    );
    assert_eq!(svc["scheduler"], "mh");
    assert_eq!(svc["scheduler_flags"], serde_json::json!(["mh-port"]));
    assert_eq!(svc["mh_table_size"], 4093);
    assert_eq!(svc["session_affinity"], "client_ip");
    assert_eq!(svc["session_affinity_timeout"], "10m");
    assert_eq!(svc["connect_timeout"], "2s");
    assert_eq!(svc["idle_timeout"], "15m");
    assert_eq!(svc["max_connect_attempts"], 2);
    assert_eq!(
        svc["endpoints"],
        serde_json::json!([
            {"address": a.to_string(), "weight": 2, "max_connections": 100, "state": "active"},
            {"address": b.to_string(), "weight": 1, "max_connections": null, "state": "active"},
        ])
    );
    let before = scrape(admin);
    let first_swap = value(&before, "ringlb_table_last_swap_timestamp_seconds", &[]);

    // b leaves, c joins quiesced, a new service appears.
    let yaml = web(&format!(
        "      - {{address: \"{a}\", weight: 2, max_connections: 100}}\n      - {{address: \"{c}\", weight: 0}}\n"
    )) + &format!(
        "  - {{name: api, listen: [\"127.0.0.1:0\"], backends: [{{address: \"{a}\"}}]}}\n"
    );
    thread::sleep(Duration::from_millis(20)); // a visibly later swap time
    replace_file(&path, &yaml);
    assert_eq!(proxy.wait_line("reloaded "), "reloaded version=2");

    let config = get_json(admin, "/config");
    assert_eq!(config["version"], 2);
    let svc = &config["services"][0];
    assert_eq!(
        svc["endpoints"],
        serde_json::json!([
            {"address": a.to_string(), "weight": 2, "max_connections": 100, "state": "active"},
            {"address": c.to_string(), "weight": 0, "max_connections": null, "state": "inactive"},
        ])
    );
    let api = &config["services"][1];
    assert_eq!(api["name"], "api");
    assert_eq!(api["scheduler"], "rr");
    assert_eq!(api["session_affinity"], "none");
    assert!(api.get("session_affinity_timeout").is_none(), "{api}");
    assert!(api.get("mh_table_size").is_none(), "{api}");
    let api_frontend = api["frontends"][0]
        .as_str()
        .unwrap()
        .parse::<SocketAddr>()
        .unwrap();
    assert_ne!(api_frontend.port(), 0, "port 0 is shown resolved");
    echo_round_trip(api_frontend, 10);

    let m = scrape(admin);
    assert_eq!(value(&m, "ringlb_table_version", &[]), 2.0);
    assert_eq!(
        value(&m, "ringlb_config_reloads_total", &[("result", "success")]),
        1.0
    );
    assert!(value(&m, "ringlb_table_last_swap_timestamp_seconds", &[]) > first_swap);
    let web_b = [("service", "web"), ("backend", &*b.to_string())];
    let web_c = [("service", "web"), ("backend", &*c.to_string())];
    assert_eq!(
        series(&before, "ringlb_backend_weight", &web_b),
        Some(1.0),
        "b was there"
    );
    assert_eq!(
        series(&m, "ringlb_backend_weight", &web_b),
        None,
        "a removed backend leaves the exposition"
    );
    assert_eq!(series(&m, "ringlb_backend_weight", &web_c), Some(0.0));
    assert!(series(
        &m,
        "ringlb_connections_accepted_total",
        &[("service", "api")]
    )
    .is_some());

    // A bad edit is counted and changes nothing.
    replace_file(&path, "admin: 127.0.0.1:0\nservices: [{name: web}]\n");
    assert_eq!(proxy.wait_line("reload-failed"), "reload-failed failures=1");
    let m = scrape(admin);
    assert_eq!(
        value(&m, "ringlb_config_reloads_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(value(&m, "ringlb_table_version", &[]), 2.0);
    assert_eq!(get_json(admin, "/config")["version"], 2);
}

#[test]
fn readyz_turns_503_while_draining_and_the_admin_api_stops_with_the_process() {
    let path = config_file(
        "drain",
        &format!(
            "admin: 127.0.0.1:0\nservices:\n  - {{name: web, listen: [\"127.0.0.1:0\"], backends: [{{address: \"{}\"}}]}}\n",
            echo_server()
        ),
    );
    let mut proxy = start(&path, "auto");
    let admin = admin_addr(&proxy);
    assert_eq!(get(admin, "/readyz"), "ready\n");
    // An open connection keeps the drain going.
    let mut held = connect(proxy.addr());
    held.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).unwrap();

    proxy.signal(libc::SIGTERM);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = request(admin, "GET", "/readyz");
        if reply.status == 503 {
            assert_eq!(reply.body, "draining\n");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(get(admin, "/healthz"), "ok\n", "alive while draining");
    held.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).unwrap();
    drop(held);
    assert!(proxy.wait_exit().success());
    assert!(
        TcpStream::connect(admin).is_err(),
        "the admin port is closed after exit"
    );
}

#[test]
fn only_get_on_known_paths() {
    let proxy = quick("epoll", &[echo_server()], &["--admin", "127.0.0.1:0"]);
    let admin = admin_addr(&proxy);
    let post = request(admin, "POST", "/metrics");
    assert_eq!(post.status, 405, "{post:?}");
    assert!(post.headers.contains("allow: get, head"), "{post:?}");
    assert_eq!(request(admin, "DELETE", "/config").status, 405);
    let missing = request(admin, "GET", "/nope");
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("/metrics"),
        "404 lists the endpoints: {missing:?}"
    );
    let head = request(admin, "HEAD", "/healthz");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert!(get(admin, "/").contains("/readyz"));
    // Quick mode serves the same API for its one service.
    assert_eq!(get_json(admin, "/config")["services"][0]["name"], "default");
}

#[test]
fn a_taken_admin_port_is_a_startup_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let want = format!("cannot listen for the admin API on {addr}: address already in use");

    let err = Ringlb::try_start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:1",
        "--admin",
        &addr,
    ])
    .err()
    .expect("--admin on a taken port must fail");
    assert_eq!(err.status.code(), Some(1), "{}", err.stderr);
    assert!(err.stderr.contains(&want), "{}", err.stderr);

    let path = config_file(
        "taken",
        &format!(
            "admin: \"{addr}\"\nservices:\n  - {{name: web, listen: [\"127.0.0.1:0\"], backends: [{{address: \"127.0.0.1:1\"}}]}}\n"
        ),
    );
    let err = Ringlb::try_start(&["run", "--config", path.to_str().unwrap()])
        .err()
        .expect("admin: on a taken port must fail");
    assert_eq!(err.status.code(), Some(1), "{}", err.stderr);
    assert!(err.stderr.contains(&want), "{}", err.stderr);
    assert!(!err.stderr.contains("panicked"), "{}", err.stderr);
}

#[test]
fn quick_mode_has_no_admin_api_unless_asked_and_off_turns_it_off() {
    let mut quick_proxy = quick("epoll", &[echo_server()], &[]);
    quick_proxy.signal(libc::SIGTERM);
    assert!(quick_proxy.wait_exit().success());
    let lines = quick_proxy.stdout_lines();
    assert!(!lines.iter().any(|l| l.starts_with("admin")), "{lines:?}");

    // `--admin off` wins over the config's key.
    let path = config_file(
        "off",
        "admin: 127.0.0.1:0\nservices:\n  - {name: web, listen: [\"127.0.0.1:0\"], backends: [{address: \"127.0.0.1:1\"}]}\n",
    );
    let mut proxy = Ringlb::start(&["run", "--config", path.to_str().unwrap(), "--admin", "off"]);
    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit().success());
    let lines = proxy.stdout_lines();
    assert!(!lines.iter().any(|l| l.starts_with("admin")), "{lines:?}");
}

#[test]
fn a_bad_admin_value_is_reported_with_its_location() {
    let path = config_file(
        "bad",
        "admin: localhost\nservices:\n  - {name: web, listen: [\"127.0.0.1:0\"], backends: [{address: \"127.0.0.1:1\"}]}\n",
    );
    let out = ringlb_command(&["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(":1:8: admin: \"localhost\" is neither off nor an IP:port address"),
        "{stderr}"
    );
    let out = ringlb_command(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:1",
        "--admin",
        "localhost:80",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad --admin is a usage error");
}

/// 300 slow clients that connect again whenever closed (each sends a byte of a request head
/// that never ends every 200 ms) cannot starve the admin API: the 30 `/healthz` probes made
/// meanwhile (a liveness probe's) are all answered, the slow ones being shed to make room.
#[test]
fn slow_clients_cannot_starve_the_admin_api() {
    use support::attack::{probe, SlowClients};
    let proxy = quick("epoll", &[echo_server()], &["--admin", "127.0.0.1:0"]);
    let admin = admin_addr(&proxy);
    let slow = SlowClients::start(admin, 300, Duration::from_millis(200), true, None);
    let mut failed = Vec::new();
    for i in 0..30 {
        match probe(admin, "/healthz") {
            Ok((200, body)) if body == "ok\n" => {}
            other => failed.push((i, other)),
        }
        // Pacing of the probes, not readiness: they spread over the attack.
        thread::sleep(Duration::from_millis(50));
    }
    let connects = slow.stop();
    assert!(
        failed.is_empty(),
        "{} of 30 probes failed ({connects} slow connections): {failed:?}",
        failed.len()
    );
    let m = scrape(admin);
    let outcome = |o| {
        value(
            &m,
            "ringlb_http_connections_total",
            &[("server", "admin"), ("outcome", o)],
        )
    };
    assert!(
        outcome("shed") > 0.0 && outcome("accepted") >= 330.0,
        "{m:?}"
    );
    assert_eq!(outcome("refused"), 0.0);
    assert_eq!(
        value(
            &m,
            "ringlb_http_accept_errors_total",
            &[("server", "admin")]
        ),
        0.0
    );
}
