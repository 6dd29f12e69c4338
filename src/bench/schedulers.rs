//! `ringlb bench schedulers`: which scheduler for backends that are not alike? Synthetic
//! backends (exponential service times, the last one N times slower), ringlb in front of them
//! with each scheduler in turn (a child process of this binary, one worker), and the same
//! load through each: the percentiles say what the slow backend costs under each scheduler.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::Context;
use balancers::SchedulerKind;
use clap::Args;
use harness::backends::{Backends, Model, Protocol, ServiceTime};
use harness::Report;
use serde::Serialize;

use super::ringlb::Ringlb;
use super::{ScenarioArg, Shape};

/// `ringlb bench schedulers`.
#[derive(Debug, Args)]
pub struct SchedulersArgs {
    /// The schedulers compared, in order.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "rr,lc,sed,nq,mh"
    )]
    pub schedulers: Vec<SchedulerKind>,

    /// Backends started.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub backends: u32,

    /// The mean service time of a backend (exponentially distributed).
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = config::parse_positive_duration)]
    pub service: Duration,

    /// The last backend is this many times slower.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub slower: u32,

    /// Something that happens to the first backend during each run, at --fault-at: it
    /// slows down (--slower times), stalls (for --fault-for) or dies. Marked on the
    /// throughput chart of --svg.
    #[arg(long, value_enum)]
    pub fault: Option<Fault>,

    /// When the fault happens, after the warm-up.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub fault_at: Duration,

    /// How long a stall lasts.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = config::parse_positive_duration)]
    pub fault_for: Duration,

    /// ringlb's I/O driver (`auto`, `uring`, `epoll`).
    #[arg(long, value_enum, default_value = "auto")]
    pub io_driver: crate::driver_arg::DriverArg,

    /// ringlb's worker threads.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,

    #[command(flatten)]
    pub shape: Shape,
}

/// What happens to the first backend in `--fault`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// Its service times become --slower times longer.
    Slow,
    /// It answers nothing for --fault-for (what arrives meanwhile waits).
    Stall,
    /// It closes its listener and every connection.
    Die,
}

/// The JSON report: the backends, then one load's report per scheduler.
#[derive(Debug, Serialize)]
struct Comparison {
    backends: Vec<BackendView>,
    runs: Vec<Run>,
}

#[derive(Debug, Serialize)]
struct BackendView {
    mean_service_us: u128,
    /// What happens to it, and when after the warm-up (`null`: nothing).
    fault: Option<Fault>,
    fault_at_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Run {
    scheduler: &'static str,
    #[serde(flatten)]
    report: Report,
}

/// Runs the comparison.
pub fn run(args: &SchedulersArgs) -> anyhow::Result<()> {
    let protocol = match args.shape.scenario {
        Some(ScenarioArg::Udp) => Protocol::Udp,
        Some(ScenarioArg::Bulk) => Protocol::Sink,
        _ => Protocol::Http,
    };
    let models = models(args);
    let proto = if protocol == Protocol::Udp {
        "udp"
    } else {
        "tcp"
    };
    let workers = args.workers.to_string();
    let mut runs = Vec::new();
    for &kind in &args.schedulers {
        let name = kind.name();
        // Backends of their own for each run, so that each meets the same fault at the
        // same time.
        let backends = Backends::start(IpAddr::V4(Ipv4Addr::LOCALHOST), protocol, &models)
            .context("cannot start the backends")?;
        // No fault before the load is lined up with them below.
        backends.set_epoch(std::time::Instant::now() + Duration::from_secs(24 * 3600));
        let ringlb = Ringlb::start(
            backends.addrs(),
            &[
                "--scheduler",
                name,
                "--proto",
                proto,
                "--workers",
                &workers,
                "--io-driver",
                args.io_driver.name(),
            ],
        )?;
        let mut load = args
            .shape
            .load(ringlb.addr(), ScenarioArg::Cps, Some(clients()));
        let start = std::time::Instant::now() + Duration::from_millis(100);
        load.start = Some(start);
        backends.set_epoch(start + load.warmup);
        let report = harness::run(&load)?;
        drop(ringlb);
        runs.push(Run {
            scheduler: name,
            report,
        });
    }
    let comparison = Comparison {
        backends: models
            .iter()
            .enumerate()
            .map(|(i, m)| BackendView {
                mean_service_us: args.service.as_micros() * u128::from(m.slower),
                fault: args.fault.filter(|_| i == 0),
                fault_at_s: args
                    .fault
                    .filter(|_| i == 0)
                    .map(|_| args.fault_at.as_secs_f64()),
            })
            .collect(),
        runs,
    };
    let series: Vec<_> = comparison
        .runs
        .iter()
        .map(|r| (r.scheduler.to_owned(), &r.report))
        .collect();
    let title = format!(
        "schedulers: {} backends, the last {} times slower",
        args.backends, args.slower
    );
    let events: Vec<_> = args
        .fault
        .map(|fault| harness::plot::Event {
            at_s: args.fault_at.as_secs_f64(),
            what: format!("backend 1 {}", fault.verb()),
        })
        .into_iter()
        .collect();
    args.shape.plot(&title, &series, &events)?;
    args.shape.output(&table(args, &comparison), &comparison)
}

/// The backends' models: exponential service times, the last `--slower` times slower, the
/// first meeting `--fault`.
fn models(args: &SchedulersArgs) -> Vec<Model> {
    (0..args.backends)
        .map(|i| {
            let slower = if i + 1 == args.backends {
                args.slower
            } else {
                1
            };
            let mut model = Model {
                slower,
                ..Model::steady(ServiceTime::Exponential(args.service))
            };
            if i == 0 {
                match args.fault {
                    Some(Fault::Slow) => model.slows = Some((args.fault_at, args.slower)),
                    Some(Fault::Stall) => model.stall = Some((args.fault_at, args.fault_for)),
                    Some(Fault::Die) => model.dies_at = Some(args.fault_at),
                    None => {}
                }
            }
            model
        })
        .collect()
}

impl Fault {
    fn verb(self) -> &'static str {
        match self {
            Fault::Slow => "slows down",
            Fault::Stall => "stalls",
            Fault::Die => "dies",
        }
    }
}

/// Where the load's connections come from by default: one loopback address each, so that
/// `sh` and `mh`, which hash the client's address, see as many clients as connections.
fn clients() -> ipnet::IpNet {
    "127.1.0.0/16".parse().expect("a constant range")
}

/// The comparison as a terminal table, one row per scheduler.
fn table(args: &SchedulersArgs, c: &Comparison) -> String {
    let ms = |us: u64| format!("{:.2}ms", us as f64 / 1000.0);
    let mut out = format!(
        "{} backends, exponential service times of mean {:?}, the last {} times slower{}\n\
         {:<10} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        c.backends.len(),
        args.service,
        args.slower,
        args.fault.map_or_else(String::new, |f| format!(
            "; the first {} {:?} after the warm-up",
            f.verb(),
            args.fault_at
        )),
        "scheduler",
        "requests",
        "throughput",
        "p50",
        "p99",
        "p99.9",
        "max",
        "errors"
    );
    for run in &c.runs {
        let (r, l) = (&run.report, &run.report.latency_us);
        out += &format!(
            "{:<10} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
            run.scheduler,
            r.requests,
            format!("{:.1}/s", r.throughput_rps),
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            r.errors.total()
        );
    }
    out
}
