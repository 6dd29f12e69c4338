//! `ringlb bench` from the command line, in its short mode (`--quick`), so that it cannot rot:
//! `load` through ringlb to a synthetic backend, `schedulers` with the ringlbs it starts
//! itself; their tables on stdout and their JSON reports in the documented schema.

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
    let target = proxy.addr().to_string();
    let (stdout, report) = bench_json(
        "load",
        &[
            "bench",
            "load",
            "--target",
            &target,
            "--quick",
            "--rate",
            "200",
            "--connections",
            "4",
        ],
    );
    assert!(stdout.contains("open loop at 200 req/s"), "{stdout}");
    assert!(stdout.contains("p99.9"), "{stdout}");
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
}

/// Runs `ringlb ARGS --json FILE`: its stdout, and the report it wrote.
fn bench_json(tag: &str, args: &[&str]) -> (String, serde_json::Value) {
    let json = std::env::temp_dir().join(format!(
        "ringlb-test-{}-bench-{tag}.json",
        std::process::id()
    ));
    let mut args = args.to_vec();
    args.extend(["--json", json.to_str().unwrap()]);
    let out = ringlb_command(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    (stdout, report)
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

#[test]
fn the_scheduler_comparison_runs_each_scheduler_through_its_own_ringlb() {
    let svg = std::env::temp_dir().join(format!(
        "ringlb-test-{}-bench-schedulers.svg",
        std::process::id()
    ));
    let (stdout, report) = bench_json(
        "schedulers",
        &[
            "bench",
            "schedulers",
            "--schedulers",
            "rr,lc",
            "--io-driver",
            "epoll",
            "--quick",
            "--rate",
            "300",
            "--fault",
            "die",
            "--fault-at",
            "1500ms",
            "--svg",
            svg.to_str().unwrap(),
        ],
    );
    let chart = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(chart.starts_with("<svg"), "{chart}");
    for name in [
        "rr",
        "lc",
        "p99.9",
        "throughput over time",
        "backend 1 dies at 1.5s",
    ] {
        assert!(chart.contains(&format!("\n{name}\n")), "{name} in {chart}");
    }
    assert!(stdout.contains("4 backends"), "{stdout}");
    assert!(
        stdout.contains("the first dies 1.5s after the warm-up"),
        "{stdout}"
    );
    let backends = report["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 4, "{report}");
    assert_eq!(
        backends[3]["mean_service_us"], 10_000,
        "the last, 10 times slower"
    );
    assert_eq!(backends[0]["fault"], "die", "{report}");
    assert_eq!(backends[0]["fault_at_s"], 1.5, "{report}");
    let runs = report["runs"].as_array().unwrap();
    let names: Vec<&str> = runs
        .iter()
        .map(|r| r["scheduler"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rr", "lc"]);
    runs.iter().for_each(a_scheduler_run_met_the_fault);
}

/// A run of `bench schedulers --quick --rate 300 --fault die`, as its JSON says.
fn a_scheduler_run_met_the_fault(run: &serde_json::Value) {
    assert_eq!(
        run["scenario"], "cps",
        "a new connection, placed, per request"
    );
    assert_eq!(run["errors"]["connect"], 0, "{run}");
    let (requests, errors) = (
        run["requests"].as_u64().unwrap(),
        run["errors"]["io"].as_u64().unwrap(),
    );
    // ringlb sends new connections past the dead backend; at most the few requests
    // in flight on it when it died fail.
    assert!(errors <= 10, "{run}");
    assert!(
        (850..=905).contains(&(requests + errors)),
        "the timetable's 900: {run}"
    );
    assert!(run["latency_us"]["p99"].as_u64().unwrap() > 0, "{run}");
    // 30 intervals of 0.1 s, each with the timetable's 30 requests answered or not.
    let timeline = &run["timeline"];
    assert_eq!(timeline["interval_s"], 0.1, "{run}");
    let answered = timeline["answered"].as_array().unwrap();
    assert_eq!(answered.len(), 30, "{run}");
    assert!(
        answered[20..].iter().all(|n| n.as_u64().unwrap() > 15),
        "{run}"
    );
}

#[test]
fn the_comparison_measures_direct_and_ringlb_and_whichever_proxies_are_installed() {
    let (stdout, report) = bench_json(
        "compare",
        &[
            "bench",
            "compare",
            "--quick",
            "--rate",
            "300",
            "--connections",
            "4",
            "--idle-connections",
            "200",
        ],
    );
    assert!(stdout.contains("thr/ringlb"), "{stdout}");
    assert!(stdout.contains("idle RSS"), "{stdout}");
    let runs = report.as_array().unwrap();
    let systems: Vec<&str> = runs.iter().map(|r| r["system"].as_str().unwrap()).collect();
    let installed = |p: &str| program(p).is_ok();
    let mut want = vec!["direct", "ringlb"];
    want.extend(["haproxy", "nginx"].into_iter().filter(|p| installed(p)));
    assert_eq!(systems, want);
    for run in runs {
        assert_eq!(run["errors"]["connect"], 0, "{run}");
        let requests = run["requests"].as_u64().unwrap();
        assert!(
            (850..=905).contains(&requests),
            "the timetable's 900: {run}"
        );
        let direct = run["system"] == "direct";
        let cpu = &run["proxy_cpu_us_per_request"];
        assert_eq!(cpu.is_null(), direct, "{run}");
        let machine = run["machine_cpu_us_per_request"].as_f64().unwrap();
        assert!(
            machine >= cpu.as_f64().unwrap_or(0.0),
            "the machine's CPU includes the proxy's: {run}"
        );
        let idle = &run["rss_per_idle_connection_bytes"];
        assert_eq!(idle.is_null(), direct, "{run}");
        // 200 connections each hold at least a socket's state in the proxy; no proxy
        // needs a megabyte for one.
        assert!(idle.as_f64().unwrap_or(0.0) < 1e6, "{run}");
    }
    let ringlb = &runs[1]["rss_per_idle_connection_bytes"];
    assert!(ringlb.as_f64().unwrap() > 0.0, "{report}");
}

/// `bench compare` on the other scenarios: bulk (costs per GB) and UDP (without HAProxy,
/// which has no UDP proxying; NGINX when installed).
#[test]
fn the_comparison_measures_bulk_streams_and_udp() {
    let short = ["--duration", "1s", "--warmup", "200ms"];
    let mut args = vec![
        "bench",
        "compare",
        "--scenario",
        "bulk",
        "--connections",
        "1",
    ];
    args.extend(short);
    let (stdout, report) = bench_json("compare-bulk", &args);
    assert!(
        stdout.contains("Gbit/s") && stdout.contains("s/GB"),
        "{stdout}"
    );
    for run in report.as_array().unwrap() {
        assert_eq!(run["scenario"], "bulk", "{run}");
        assert_eq!(run["errors"]["io"], 0, "{run}");
        assert!(run["throughput_gbps"].as_f64().unwrap() > 0.1, "{run}");
        assert!(run["machine_cpu_s_per_gb"].as_f64().unwrap() > 0.0, "{run}");
        let direct = run["system"] == "direct";
        assert_eq!(run["proxy_cpu_s_per_gb"].is_null(), direct, "{run}");
        assert!(run["rss_per_idle_connection_bytes"].is_null(), "{run}");
    }
    let mut args = vec!["bench", "compare", "--scenario", "udp", "--rate", "500"];
    args.extend(["--workers", "1,2"]);
    args.extend(short);
    let (_, report) = bench_json("compare-udp", &args);
    let runs = report.as_array().unwrap();
    let systems: Vec<&str> = runs.iter().map(|r| r["system"].as_str().unwrap()).collect();
    let mut want = vec!["direct", "ringlb-1w", "ringlb-2w"];
    want.extend(program("nginx").ok().map(|_| "nginx"));
    assert_eq!(systems, want, "no haproxy for UDP");
    for run in runs {
        assert_eq!(run["errors"]["timeout"], 0, "{run}");
        let requests = run["requests"].as_u64().unwrap();
        assert!(
            (480..=505).contains(&requests),
            "the timetable's 500: {run}"
        );
    }
}

/// The live progress line: drawn on a terminal (a pseudo-terminal from `script`), and
/// never into a pipe or a file.
#[test]
fn the_progress_line_shows_on_a_terminal_only() {
    let backends = Backends::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        Protocol::Http,
        &[Model::steady(ServiceTime::Constant(Duration::ZERO))],
    )
    .unwrap();
    let target = backends.addrs()[0].to_string();
    let args = [
        "bench",
        "load",
        "--target",
        &target,
        "--rate",
        "100",
        "--duration",
        "1s",
        "--warmup",
        "500ms",
    ];
    let out = ringlb_command(&args).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("answered"),
        "no line into a pipe: {stderr}"
    );
    let Some(script) = require(
        program("script"),
        "script (util-linux)",
        "apt install bsdutils",
    ) else {
        return;
    };
    let command = format!("{} {}", env!("CARGO_BIN_EXE_ringlb"), args.join(" "));
    let out = std::process::Command::new(script)
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{seen}");
    for want in [
        "warm-up, 100/s",
        "measuring, 100/s",
        "s left",
        "answered",
        "errors",
    ] {
        assert!(seen.contains(want), "{want} in {seen:?}");
    }
    assert!(seen.contains("requests"), "the table after it: {seen}");
}
