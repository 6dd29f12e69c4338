//! `ringlb bench load` from the command line: a short load (`--quick`) through ringlb to a
//! synthetic backend, its table on stdout and its JSON report in the documented schema.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use harness::backends::{Backends, Model, Protocol, ServiceTime};
use support::*;

#[test]
fn a_quick_load_through_ringlb_prints_a_table_and_writes_its_json_report() {
    let service = ServiceTime::Constant(Duration::from_millis(1));
    let backends = Backends::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        Protocol::Http,
        &[Model::steady(service), Model::steady(service)],
    )
    .unwrap();
    let proxy = quick("epoll", backends.addrs(), &[]);
    let json = std::env::temp_dir().join(format!("ringlb-test-{}-bench.json", std::process::id()));
    let target = proxy.addr().to_string();
    let out = ringlb_command(&[
        "bench",
        "load",
        "--target",
        &target,
        "--quick",
        "--rate",
        "200",
        "--connections",
        "4",
        "--json",
        json.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("open loop at 200 req/s"), "{stdout}");
    assert!(stdout.contains("p99.9"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["target"], target.as_str());
    assert_eq!(report["scenario"], "rr");
    assert_eq!(report["mode"], "open");
    assert_eq!(report["errors"]["connect"], 0, "{report}");
    // 3 s measured at 200 a second: the timetable's 600.
    let requests = report["requests"].as_u64().unwrap();
    assert!((570..=605).contains(&requests), "{report}");
    let p50 = report["latency_us"]["p50"].as_u64().unwrap();
    assert!(p50 >= 1_000, "never below the backend's 1 ms: {report}");
    for key in ["p90", "p99", "p999", "max", "mean"] {
        assert!(report["latency_us"][key].is_number(), "{report}");
    }
    let _ = std::fs::remove_file(&json);
}

#[test]
fn a_bad_target_or_rate_is_refused_with_the_reason() {
    let out = ringlb_command(&["bench", "load", "--target", "localhost:80"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target"));
    let out = ringlb_command(&[
        "bench",
        "load",
        "--target",
        "127.0.0.1:9",
        "--rate",
        "0",
        "--quick",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the rate must be a positive number of requests a second, not 0"),
        "{stderr}"
    );
}
