//! `ringlb run` and `ringlb check`: config in, data plane up, signals, drain.

use std::io::Write;
use std::num::NonZeroU32;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use balancers::SchedulerConfig;
use config::{Backend, Config, Protocol, Service, ServiceDefaults, Table};
use proxy_core::{Proxy, ProxyOptions};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::{DataPlaneArgs, Proto, RunArgs};

/// `ringlb run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = match (&args.config, args.listen) {
        (Some(path), _) => config::parse_yaml_file(path)?,
        (None, Some(listen)) => quick_config(listen, &args)?,
        (None, None) => bail!("give --config FILE, or --listen ADDR with --to ADDR[,ADDR...]"),
    };
    serve(config, &args.data_plane, |_| {})
}

fn quick_config(listen: std::net::SocketAddr, args: &RunArgs) -> anyhow::Result<Config> {
    if args.proto == Proto::Udp {
        bail!("--proto udp: UDP services are not supported by this version yet (tcp only)");
    }
    let backends = args
        .to
        .iter()
        .map(|&address| Backend::new(address, ServiceDefaults::WEIGHT))
        .collect();
    let mut scheduler = SchedulerConfig::default();
    scheduler.kind = args.scheduler;
    let mut service =
        Service::with_defaults("default", Protocol::Tcp, vec![listen], backends, scheduler);
    service.connect_timeout = args.connect_timeout;
    service.idle_timeout = args.idle_timeout;
    service.max_connect_attempts = NonZeroU32::new(args.max_connect_attempts)
        .context("--max-connect-attempts must be at least 1")?;
    Ok(Config {
        services: vec![service],
    })
}

/// Starts the data plane for `config`, calls `on_ready` once every listener is bound, then
/// serves until SIGTERM or SIGINT and drains.
pub fn serve(
    mut config: Config,
    dp: &DataPlaneArgs,
    on_ready: impl FnOnce(&Proxy),
) -> anyhow::Result<()> {
    match proxy_core::raise_nofile_limit() {
        Ok(limit) => tracing::debug!(limit, "raised the open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    // Registered before the workers start so that an early signal is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("cannot install signal handlers")?;
    let options = ProxyOptions {
        workers: dp
            .workers
            .map_or_else(|| ProxyOptions::default().workers, usize::from),
        io_driver: dp.io_driver.into(),
        share_ports: dp.share_port,
        ..ProxyOptions::default()
    };
    let listeners = proxy_core::bind(&mut config, &options)?;
    let table = Arc::new(ArcSwap::from_pointee(Table::build(&config, None)));
    let proxy = Proxy::start(Arc::clone(&table), listeners, &options)?;
    announce(&proxy, &table.load());
    on_ready(&proxy);

    let signal = signals.forever().next().unwrap_or(SIGTERM);
    let name = if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    tracing::info!(signal = name, drain_timeout = ?dp.drain_timeout, "stopped accepting; draining open connections");
    let report = proxy.shutdown(dp.drain_timeout);
    if report.workers_cut > 0 {
        tracing::warn!(
            workers = report.workers_cut,
            "drain timeout reached with connections still open; closing them"
        );
    }
    for svc in table.load().services() {
        let c = &svc.counters;
        tracing::info!(
            service = %svc.service.name,
            accepted = c.accepted.load(Relaxed),
            connect_failed = c.connect_failed.load(Relaxed),
            no_backend = c.no_backend.load(Relaxed),
            connect_retries = c.connect_retries.load(Relaxed),
            idle_timeouts = c.idle_timeouts.load(Relaxed),
            bytes_to_backend = c.bytes_to_backend.load(Relaxed),
            bytes_to_client = c.bytes_to_client.load(Relaxed),
            "service totals"
        );
    }
    Ok(())
}

/// Prints one stable line per bound frontend and a `ready` line on stdout (scripts and tests
/// wait for these), and logs the same.
fn announce(proxy: &Proxy, table: &Table) {
    let mut out = std::io::stdout().lock();
    for f in proxy.frontends() {
        let name = table
            .lookup(&f.key)
            .map_or("?", |s| s.service.name.as_str());
        let _ = writeln!(
            out,
            "listening service={name} proto={} addr={}",
            f.key.protocol, f.local_addr
        );
    }
    let driver = proxy
        .drivers()
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "ready workers={} driver={driver}",
        proxy.drivers().len()
    );
    let _ = out.flush();
    tracing::info!(workers = proxy.drivers().len(), %driver, frontends = proxy.frontends().len(), "ringlb ready");
}

/// `ringlb check`: exit 0 and a summary when valid, exit 1 and every problem when not.
pub fn check(path: &Path) -> ExitCode {
    match config::parse_yaml_file(path) {
        Ok(config) => {
            print!("{}", describe(&config));
            println!(
                "{}: OK ({} services)",
                path.display(),
                config.services.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            let n = e.problems().len().max(1);
            eprintln!(
                "{}: invalid ({n} problem{})",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

/// What a config would serve, for humans.
fn describe(config: &Config) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for svc in &config.services {
        let sc = &svc.scheduler;
        let flags: Vec<&str> = [
            (sc.sh_fallback, "sh-fallback"),
            (sc.sh_port, "sh-port"),
            (sc.mh_fallback, "mh-fallback"),
            (sc.mh_port, "mh-port"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let _ = write!(
            s,
            "service {} ({}): scheduler {}",
            svc.name, svc.protocol, sc.kind
        );
        if !flags.is_empty() {
            let _ = write!(s, " [{}]", flags.join(","));
        }
        if let Some(t) = svc.session_affinity {
            let _ = write!(s, ", client_ip affinity {}", humantime::format_duration(t));
        }
        let _ = writeln!(
            s,
            ", connect_timeout {}, idle_timeout {}, max_connect_attempts {}",
            humantime::format_duration(svc.connect_timeout),
            humantime::format_duration(svc.idle_timeout),
            svc.max_connect_attempts
        );
        for l in &svc.listen {
            let _ = writeln!(s, "  listen  {l}");
        }
        for b in &svc.backends {
            let _ = write!(s, "  backend {} weight {}", b.address, b.weight);
            if let Some(m) = b.max_connections {
                let _ = write!(s, " max_connections {m}");
            }
            let _ = writeln!(s);
        }
    }
    s
}
