//! `ringlb bench schedulers`: which scheduler for backends that are not alike? Synthetic
//! backends (exponential service times, the last one N times slower), ringlb in front of them
//! with each scheduler in turn (a child process of this binary, one worker), and the same
//! load through each: the percentiles say what the slow backend costs under each scheduler.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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

    /// ringlb's worker threads.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,

    #[command(flatten)]
    pub shape: Shape,
}

/// The JSON report: the backends, then one load's report per scheduler.
#[derive(Debug, Serialize)]
struct Comparison {
    backends: Vec<BackendView>,
    runs: Vec<Run>,
}

#[derive(Debug, Serialize)]
struct BackendView {
    address: SocketAddr,
    mean_service_us: u128,
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
        _ => Protocol::Http,
    };
    let models: Vec<Model> = (0..args.backends)
        .map(|i| {
            let slower = if i + 1 == args.backends {
                args.slower
            } else {
                1
            };
            Model {
                slower,
                ..Model::steady(ServiceTime::Exponential(args.service))
            }
        })
        .collect();
    let backends = Backends::start(IpAddr::V4(Ipv4Addr::LOCALHOST), protocol, &models)
        .context("cannot start the backends")?;
    let proto = if protocol == Protocol::Udp {
        "udp"
    } else {
        "tcp"
    };
    let workers = args.workers.to_string();
    let mut runs = Vec::new();
    for &kind in &args.schedulers {
        let name = kind.name();
        let ringlb = Ringlb::start(
            backends.addrs(),
            &["--scheduler", name, "--proto", proto, "--workers", &workers],
        )?;
        let load = args
            .shape
            .load(ringlb.addr(), ScenarioArg::Cps, Some(clients()));
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
            .zip(backends.addrs())
            .map(|(m, &address)| BackendView {
                address,
                mean_service_us: args.service.as_micros() * u128::from(m.slower),
            })
            .collect(),
        runs,
    };
    let series: Vec<_> = comparison
        .runs
        .iter()
        .map(|r| (r.scheduler.to_owned(), r.report.latency_us))
        .collect();
    let title = format!(
        "schedulers: {} backends, the last {} times slower",
        args.backends, args.slower
    );
    args.shape.plot(&title, &series)?;
    args.shape.output(&table(args, &comparison), &comparison)
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
        "{} backends, exponential service times of mean {:?}, the last {} times slower\n\
         {:<10} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        c.backends.len(),
        args.service,
        args.slower,
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
