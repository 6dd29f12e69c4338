//! `ringlb bench compare`: ringlb against whatever of HAProxy and NGINX is installed, on the
//! same load, the same backends and the same pinning, in one run: no proxy (`direct`, the
//! backends themselves), then each proxy in turn, one worker or thread each. Besides the
//! client's numbers, each proxy's own CPU time per request, and the ratios to ringlb.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use harness::backends::{Backends, Model, Protocol, ServiceTime};
use harness::{usage, Report};
use serde::Serialize;

use super::proxies::{self, Proxy};
use super::{ScenarioArg, Shape};

/// `ringlb bench compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Pin every proxy (ringlb, HAProxy, NGINX) to these CPUs; give the load others with
    /// --cpus, so that neither measures the other.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub proxy_cpu: Vec<usize>,

    /// ringlb's I/O drivers measured, each a run of its own (`auto`, `uring`, `epoll`).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        value_enum,
        default_value = "auto"
    )]
    pub io_drivers: Vec<crate::driver_arg::DriverArg>,

    /// ringlb's worker counts measured, each a run of its own (with more than one worker,
    /// give --proxy-cpu a CPU each or leave it out).
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Vec<u16>,

    /// Backends started (answering at once).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub backends: u32,

    /// Idle connections held through each proxy after its load, to measure its memory per
    /// connection (0: not measured).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub idle_connections: u32,

    #[command(flatten)]
    pub shape: Shape,
}

/// One system's run.
#[derive(Debug, Serialize)]
struct Run {
    system: String,
    /// CPU microseconds of the proxy's processes per answered request (`null` for direct).
    proxy_cpu_us_per_request: Option<f64>,
    /// Busy CPU microseconds of the whole machine (load, backends, proxy, kernel) per
    /// answered request: the fair figure for work a proxy leaves to the kernel.
    machine_cpu_us_per_request: Option<f64>,
    /// `bulk`: CPU seconds of the proxy's processes per gigabyte (10^9 bytes) carried.
    proxy_cpu_s_per_gb: Option<f64>,
    /// `bulk`: busy CPU seconds of the whole machine per gigabyte carried.
    machine_cpu_s_per_gb: Option<f64>,
    /// Growth of the proxy's resident memory per idle connection held through it, in bytes
    /// (`rr` and `cps`).
    rss_per_idle_connection_bytes: Option<f64>,
    #[serde(flatten)]
    report: Report,
}

/// Runs the comparison.
pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    let scenario = args.shape.scenario.unwrap_or(ScenarioArg::Rr);
    let protocol = match scenario {
        ScenarioArg::Rr | ScenarioArg::Cps => Protocol::Http,
        ScenarioArg::Bulk => Protocol::Sink,
        ScenarioArg::Udp => Protocol::Udp,
    };
    let models =
        vec![Model::steady(ServiceTime::Constant(Default::default())); args.backends as usize];
    // The backends share the load's first CPU, away from the proxy's.
    let cpu = args.shape.cpus.first().copied();
    let backends = Backends::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), protocol, &models, cpu)
        .context("cannot start the backends")?;
    let addrs = backends.addrs();
    let dir = std::env::temp_dir().join(format!("ringlb-bench-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut runs = vec![measure("direct", None, addrs[0], &args.shape)?];
    let udp = scenario == ScenarioArg::Udp;
    for system in systems(args) {
        let name = system.name(args);
        if udp && system == System::Haproxy {
            eprintln!("haproxy: no generic UDP proxying, left out");
            continue;
        }
        let Some(proxy) = start(system, addrs, &args.proxy_cpu, &dir, udp)? else {
            eprintln!("{name}: not installed, left out");
            continue;
        };
        let mut run = measure(&name, Some(&proxy), proxy.addr(), &args.shape)?;
        if protocol == Protocol::Http {
            run.rss_per_idle_connection_bytes = idle_memory(&proxy, args.idle_connections)?;
        }
        runs.push(run);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let series: Vec<_> = runs.iter().map(|r| (r.system.clone(), &r.report)).collect();
    args.shape
        .plot("ringlb against HAProxy and NGINX", &series, &[])?;
    args.shape.output(&table(&runs), &runs)
}

/// A system measured through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Ringlb {
        driver: crate::driver_arg::DriverArg,
        workers: u16,
    },
    Haproxy,
    Nginx,
}

/// Each ringlb asked for (each driver at each worker count), then HAProxy and NGINX.
fn systems(args: &CompareArgs) -> Vec<System> {
    let mut systems = Vec::new();
    for &driver in &args.io_drivers {
        for &workers in &args.workers {
            systems.push(System::Ringlb { driver, workers });
        }
    }
    systems.extend([System::Haproxy, System::Nginx]);
    systems
}

impl System {
    /// `ringlb` (with its driver and worker count when several are measured), `haproxy`,
    /// `nginx`.
    fn name(self, args: &CompareArgs) -> String {
        match self {
            System::Ringlb { driver, workers } => {
                let mut name = "ringlb".to_owned();
                if args.io_drivers.len() > 1 {
                    name += &format!("-{}", driver.name());
                }
                if args.workers.len() > 1 {
                    name += &format!("-{workers}w");
                }
                name
            }
            System::Haproxy => "haproxy".to_owned(),
            System::Nginx => "nginx".to_owned(),
        }
    }
}

/// Starts `system` over `backends` (UDP ones with `udp`): `None` when it is not installed.
fn start(
    system: System,
    backends: &[SocketAddr],
    cpus: &[usize],
    dir: &std::path::Path,
    udp: bool,
) -> anyhow::Result<Option<Proxy>> {
    let listen = proxies::free_addr(udp)?;
    let to: Vec<String> = backends.iter().map(ToString::to_string).collect();
    let (program, args) = match system {
        System::Ringlb { driver, workers } => {
            let exe = std::env::current_exe().context("cannot find this ringlb binary")?;
            let args = [
                "run",
                "--listen",
                &listen.to_string(),
                "--to",
                &to.join(","),
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .chain(["--admin", "off", "--proto"].map(str::to_owned))
            .chain([if udp { "udp" } else { "tcp" }.to_owned()])
            .chain(["--workers".to_owned(), workers.to_string()])
            .chain(["--io-driver".to_owned(), driver.name().to_owned()])
            .collect();
            (exe, args)
        }
        System::Haproxy => {
            let Some(exe) = proxies::installed("haproxy") else {
                return Ok(None);
            };
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, proxies::haproxy_config(listen, backends))?;
            (
                exe,
                vec!["-db".to_owned(), "-f".to_owned(), cfg.display().to_string()],
            )
        }
        System::Nginx => {
            let Some(exe) = proxies::installed("nginx") else {
                return Ok(None);
            };
            let module = proxies::nginx_stream_module();
            let cfg = dir.join("nginx.conf");
            std::fs::write(
                &cfg,
                proxies::nginx_config(listen, backends, dir, module.as_deref(), udp),
            )?;
            let d = dir.display().to_string();
            let args = [
                "-p",
                &d,
                "-e",
                &format!("{d}/error.log"),
                "-c",
                &cfg.display().to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            (exe, args)
        }
    };
    Proxy::start(&program, &args, cpus, listen, udp).map(Some)
}

/// The load of `shape` against `target`, with the CPU time `proxy` and the machine spent
/// meanwhile.
fn measure(
    system: &str,
    proxy: Option<&Proxy>,
    target: SocketAddr,
    shape: &Shape,
) -> anyhow::Result<Run> {
    let cpu = || (proxy.map(Proxy::cpu_seconds), usage::machine_busy_seconds());
    let before = cpu();
    let report = harness::run(&shape.load(target, ScenarioArg::Rr, None))?;
    let after = cpu();
    // The CPU of the whole run (warm-up too) over every request it answered, warm-up
    // included at the same rate as the window.
    let whole = (report.duration_s + report.warmup_s) / report.duration_s.max(1e-9);
    let (requests, gb) = (
        report.requests as f64 * whole,
        report.bytes as f64 * whole / 1e9,
    );
    let per = |secs: f64, units: f64, scale: f64| (units > 0.0).then(|| secs / units * scale);
    let proxy = after.0.zip(before.0).map(|(a, b)| a - b);
    let machine = after.1 - before.1;
    let bulk = report.bytes > 0;
    Ok(Run {
        system: system.to_owned(),
        proxy_cpu_us_per_request: proxy.and_then(|p| per(p, requests, 1e6)),
        machine_cpu_us_per_request: per(machine, requests, 1e6),
        proxy_cpu_s_per_gb: proxy.and_then(|p| per(p, gb, 1.0)).filter(|_| bulk),
        machine_cpu_s_per_gb: per(machine, gb, 1.0).filter(|_| bulk),
        rss_per_idle_connection_bytes: None,
        report,
    })
}

/// How much `proxy`'s resident memory grows per connection while it holds `n` idle ones
/// (`None` when `n` is 0).
fn idle_memory(proxy: &Proxy, n: u32) -> anyhow::Result<Option<f64>> {
    if n == 0 {
        return Ok(None);
    }
    let before = proxy.rss_bytes();
    let idle = harness::idle::Idle::hold(proxy.addr(), n as usize, Duration::from_secs(5))
        .with_context(|| format!("cannot hold {n} idle connections through {}", proxy.addr()))?;
    let held = proxy.rss_bytes();
    drop(idle);
    Ok(Some(held.saturating_sub(before) as f64 / f64::from(n)))
}

/// The runs as a terminal table, with each system's throughput and CPU per request as a
/// ratio to ringlb's.
fn table(runs: &[Run]) -> String {
    // The ratios are to the first ringlb measured.
    let ringlb = runs.iter().find(|r| r.system.starts_with("ringlb"));
    let ms = |us: u64| format!("{:.2}ms", us as f64 / 1000.0);
    let opt =
        |v: Option<f64>, unit: &str| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}{unit}"));
    let opt3 =
        |v: Option<f64>, unit: &str| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}{unit}"));
    let ratio = |mine: Option<f64>, theirs: Option<f64>| match (mine, theirs) {
        (Some(mine), Some(theirs)) if theirs > 0.0 => format!("{:.2}x", mine / theirs),
        _ => "-".to_owned(),
    };
    let mut out = format!(
        "{:<12} {:>12} {:>9} {:>9} {:>7} {:>10} {:>12} {:>10} {:>10} {:>10}\n",
        "system",
        "throughput",
        "p50",
        "p99",
        "errors",
        "proxy CPU",
        "machine CPU",
        "idle RSS",
        "thr/ringlb",
        "CPU/ringlb"
    );
    for run in runs {
        let r = &run.report;
        out += &format!(
            "{:<12} {:>12} {:>9} {:>9} {:>7} {:>10} {:>12} {:>10} {:>10} {:>10}\n",
            run.system,
            if r.bytes > 0 {
                format!("{:.2}Gbit/s", r.throughput_gbps)
            } else {
                format!("{:.1}/s", r.throughput_rps)
            },
            ms(r.latency_us.p50),
            ms(r.latency_us.p99),
            r.errors.total(),
            if r.bytes > 0 {
                opt3(run.proxy_cpu_s_per_gb, "s/GB")
            } else {
                opt(run.proxy_cpu_us_per_request, "us")
            },
            if r.bytes > 0 {
                opt3(run.machine_cpu_s_per_gb, "s/GB")
            } else {
                opt(run.machine_cpu_us_per_request, "us")
            },
            opt(run.rss_per_idle_connection_bytes.map(|b| b / 1024.0), "KiB"),
            ratio(
                Some(r.throughput_rps),
                ringlb.map(|g| g.report.throughput_rps)
            ),
            ratio(
                run.proxy_cpu_us_per_request,
                ringlb.and_then(|g| g.proxy_cpu_us_per_request)
            ),
        );
    }
    out += "CPU: per request answered (bulk: per GB; proxy: its processes; machine: every CPU, \
            kernel included); idle RSS: per connection held idle\n";
    if let Some(direct) = runs.first() {
        out += &super::client_cost(&direct.report);
        out += " (direct)\n";
    }
    out
}
