//! `ringlb bench`: measuring loads from the command line (the machinery is in the
//! `ringlb-bench` crate, `harness`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod compare;
mod proxies;
mod ringlb;
mod schedulers;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use harness::{Load, Mode, Report, Scenario};

/// What `ringlb bench` runs.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// One load against any address (ringlb, HAProxy, NGINX, a kernel VIP, a server): HTTP/1.1
    /// as wrk speaks it (`rr`, `cps`) or UDP request/response; open loop with --rate, closed
    /// loop without. Prints a table; --json writes the report.
    Load(LoadArgs),
    /// The schedulers compared: synthetic backends (one of them N times slower), ringlb in
    /// front of them with each scheduler in turn, the same load through each; a table of
    /// latency percentiles per scheduler.
    Schedulers(schedulers::SchedulersArgs),
    /// ringlb against whatever of HAProxy and NGINX is installed: the same backends, the same
    /// load, the same pinning, one run; throughput, latency and each proxy's CPU per request,
    /// as ratios to ringlb.
    Compare(compare::CompareArgs),
}

/// The scenarios of `--scenario`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenarioArg {
    /// HTTP/1.1 GET over keep-alive connections.
    Rr,
    /// HTTP/1.1 GET with `Connection: close`: a new connection per request.
    Cps,
    /// A stream of bytes per connection, as fast as the path takes them, to a server that
    /// discards them (closed loop only).
    Bulk,
    /// A datagram answered by a datagram that starts with it (an echo).
    Udp,
}

/// `ringlb bench load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The address to load (`IP:port`).
    #[arg(long, value_name = "ADDR")]
    pub target: SocketAddr,

    #[command(flatten)]
    pub shape: Shape,
}

/// The shape of a load: what is sent, how fast, for how long; and where the report goes.
#[derive(Debug, Args)]
pub struct Shape {
    /// What is sent (default: `rr` for `load`, `cps` for `schedulers`, whose every request
    /// must be a new connection for the scheduler to place it).
    #[arg(long, value_enum)]
    pub scenario: Option<ScenarioArg>,

    /// Requests a second over all connections, on a fixed timetable (open loop: each latency
    /// counts from when its request was due). Several (`1000,2000,4000`): rate steps, each
    /// for --duration, after one warm-up. Without it: closed loop, each connection as fast
    /// as it is answered.
    #[arg(long, value_name = "N[,N...]", value_delimiter = ',')]
    pub rate: Vec<f64>,

    /// Connections (UDP: sockets).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,

    /// Client threads, each its own runtime.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,

    /// CPUs to pin the client threads to, in turn (e.g. `2,3`).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub cpus: Vec<usize>,

    /// How long the load is measured.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = config::parse_positive_duration)]
    pub duration: Duration,

    /// How long the load runs first without being counted.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// A request not answered within this is a timeout error.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = config::parse_positive_duration)]
    pub timeout: Duration,

    /// Connect from the addresses of this range, one per connection (e.g. `127.1.0.0/16` on
    /// loopback), so that `sh` and `mh` see many clients. Default: the address the kernel
    /// picks (`bench schedulers`: `127.1.0.0/16`).
    #[arg(long, value_name = "CIDR")]
    pub sources: Option<ipnet::IpNet>,

    /// A run of a few seconds (1 s warm-up, 3 s measured), for a first look and for CI.
    #[arg(long)]
    pub quick: bool,

    /// Also write the report as JSON to this file (`-`: stdout instead of the table).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Also draw the runs as SVG in this file: latency percentiles, and throughput over time
    /// with the moments marked when a backend slowed, stalled or died.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
}

impl Shape {
    /// The load of this shape against `target`, `default` unless `--scenario` says, from the
    /// addresses of `sources` unless `--sources` says.
    pub fn load(
        &self,
        target: SocketAddr,
        default: ScenarioArg,
        sources: Option<ipnet::IpNet>,
    ) -> Load {
        let (duration, warmup) = if self.quick {
            (Duration::from_secs(3), Duration::from_secs(1))
        } else {
            (self.duration, self.warmup)
        };
        Load {
            target,
            scenario: match self.scenario.unwrap_or(default) {
                ScenarioArg::Rr => Scenario::Rr,
                ScenarioArg::Cps => Scenario::Cps,
                ScenarioArg::Bulk => Scenario::Bulk,
                ScenarioArg::Udp => Scenario::Udp,
            },
            mode: if self.rate.is_empty() {
                Mode::Closed
            } else {
                Mode::Open {
                    rates: self.rate.clone(),
                }
            },
            connections: self.connections as usize,
            threads: self.threads as usize,
            cpus: self.cpus.clone(),
            duration,
            warmup,
            timeout: self.timeout,
            sources: self.sources.or(sources).map_or_else(Vec::new, |net| {
                net.hosts().take(self.connections as usize).collect()
            }),
            start: None,
            progress: true,
        }
    }

    /// Writes the picture `--svg` asks for: `title`, a line per run, `events` marked.
    pub fn plot(
        &self,
        title: &str,
        runs: &[(String, &Report)],
        events: &[harness::plot::Event],
    ) -> anyhow::Result<()> {
        let Some(path) = &self.svg else {
            return Ok(());
        };
        let svg = harness::plot::runs(title, runs, events)?;
        std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Prints `table`, or the JSON instead with `--json -`, and writes the JSON to the file
    /// `--json` names.
    pub fn output(&self, table: &str, json: &impl serde::Serialize) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(json)?;
        match self.json.as_deref() {
            Some(path) if path == std::path::Path::new("-") => println!("{json}"),
            Some(path) => {
                std::fs::write(path, json + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
                print!("{table}");
            }
            None => print!("{table}"),
        }
        Ok(())
    }
}

/// Runs `command`.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Load(args) => load(&args),
        BenchCommand::Schedulers(args) => schedulers::run(&args),
        BenchCommand::Compare(args) => compare::run(&args),
    }
}

fn load(args: &LoadArgs) -> anyhow::Result<()> {
    let report = harness::run(&args.shape.load(args.target, ScenarioArg::Rr, None))?;
    let title = format!("{} {}", report.scenario, report.target);
    args.shape
        .plot(&title, &[(report.target.clone(), &report)], &[])?;
    args.shape.output(&table(&report), &report)
}

/// The report as a terminal table: the whole window, and each rate step when it has several.
fn table(r: &Report) -> String {
    let pacing = match r.rate {
        Some(_) if r.steps.len() > 1 => format!("open loop in {} rate steps", r.steps.len()),
        Some(rate) => format!("open loop at {rate} req/s"),
        None => "closed loop".to_owned(),
    };
    let mut out = format!(
        "{target}  {scenario}  {pacing}  {connections} connections  {threads} thread(s)  \
         {secs}s measured after {warm}s\n{:>10} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        "rate",
        "requests",
        "throughput",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "errors",
        target = r.target,
        scenario = r.scenario,
        connections = r.connections,
        threads = r.threads,
        secs = r.duration_s,
        warm = r.warmup_s,
    );
    if r.steps.len() > 1 {
        for step in &r.steps {
            let rate = step
                .rate
                .map_or_else(|| "-".to_owned(), |v| format!("{v}/s"));
            out += &row(
                &rate,
                step.requests,
                step.throughput_rps,
                &step.latency_us,
                &step.errors,
            );
        }
    }
    let rate = r.rate.map_or_else(|| "-".to_owned(), |v| format!("{v}/s"));
    let all = if r.steps.len() > 1 { "all" } else { &rate };
    out += &row(all, r.requests, r.throughput_rps, &r.latency_us, &r.errors);
    if r.bytes > 0 {
        out += &format!("{:.2} Gbit/s ({} bytes)\n", r.throughput_gbps, r.bytes);
    }
    let e = &r.errors;
    out + &format!(
        "errors: {} (connect {}, timeout {}, io {}, status {})\n{}\n",
        e.total(),
        e.connect,
        e.timeout,
        e.io,
        e.status,
        client_cost(r)
    )
}

/// What the load generator itself spent per request, and what one client core can drive.
fn client_cost(r: &Report) -> String {
    let us = r.client_cpu_us_per_request;
    if us > 0.0 {
        format!(
            "load generator: {us:.1}us of client CPU per request, so one client core drives up \
             to {:.0}/s",
            1e6 / us
        )
    } else {
        "load generator: no request ended".to_owned()
    }
}

fn row(
    rate: &str,
    requests: u64,
    rps: f64,
    l: &harness::Latency,
    e: &harness::ErrorCounts,
) -> String {
    let ms = |us: u64| format!("{:.2}ms", us as f64 / 1000.0);
    format!(
        "{:>10} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        rate,
        requests,
        format!("{rps:.1}/s"),
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        e.total()
    )
}
