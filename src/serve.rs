//! `ringlb run`: config in, data plane up, signals, drain.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use balancers::SchedulerConfig;
use config::{Backend, Config, DnsConfig, DnsWatch, Protocol, Service, ServiceDefaults, Table};
use proxy_core::{Proxy, ProxyOptions};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::admin::{self, AdminBind, AdminState, DataPlane};
use crate::announce::{announce, announce_line};
use crate::budget::DescriptorBudget;
use crate::cli::{DataPlaneArgs, Proto, ReloadArgs, RunArgs};
use crate::decisions::{self, DecisionWriter};
use control::ControlRuntime;

/// `ringlb run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.kubernetes {
        // Before the watch: it starts the node health server on the control runtime.
        let control = start_control()?;
        let (kube, config) = crate::node_mode::Kube::start(&args, control.plane())?;
        let admin = admin_bind(&args, None);
        return serve_with(
            config,
            Changes::Kube(&kube),
            &control,
            &args.reload,
            &args.data_plane,
            admin,
            |_| {},
        );
    }
    let mut admin_key = None;
    let mut dns = DnsConfig::default();
    let config = match (&args.config, args.listen) {
        (Some(path), _) => {
            let loaded = config::load(path, &args.node_addresses)?;
            report_not_proxied(&loaded.not_proxied);
            admin_key = admin_key_of(path, loaded.format)?;
            dns = loaded.dns;
            loaded.config
        }
        (None, Some(listen)) => quick_config(listen, &args)?,
        (None, None) => bail!("give --config FILE, or --listen ADDR with --to ADDR[,ADDR...]"),
    };
    let source = args.config.as_deref().map(|path| Source {
        path,
        node_addresses: &args.node_addresses,
        dns: &dns,
    });
    let admin = admin_bind(&args, admin_key);
    serve(
        config,
        source,
        &args.reload,
        &args.data_plane,
        admin,
        |_| {},
    )
}

/// Where the admin API listens: `--admin`, else the config file's `admin:` key, else
/// [`config::Admin::DEFAULT`] with `--config`; in quick mode only where `--admin` says.
fn admin_bind(args: &RunArgs, admin_key: Option<config::Admin>) -> Option<AdminBind> {
    let (setting, explicit) = match (args.admin.or(admin_key), &args.config) {
        (Some(setting), _) => (setting, true),
        (None, Some(_)) => (config::Admin::Listen(config::Admin::DEFAULT), false),
        (None, None) if args.kubernetes => (config::Admin::Listen(config::Admin::DEFAULT), false),
        (None, None) => return None,
    };
    match setting {
        config::Admin::Off => None,
        config::Admin::Listen(addr) => Some(AdminBind { addr, explicit }),
    }
}

/// The `admin:` key of a ringlb YAML file; Kubernetes manifests have none.
fn admin_key_of(path: &Path, format: config::Format) -> anyhow::Result<Option<config::Admin>> {
    if format != config::Format::Ringlb {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(config::parse_admin(&path.display().to_string(), &text)?)
}

fn quick_config(listen: std::net::SocketAddr, args: &RunArgs) -> anyhow::Result<Config> {
    let backends = args
        .to
        .iter()
        .map(|&address| Backend::new(address, ServiceDefaults::WEIGHT))
        .collect();
    let protocol = match args.proto {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
    };
    let mut scheduler = SchedulerConfig::default();
    scheduler.kind = args.scheduler;
    let mut service =
        Service::with_defaults("default", protocol, vec![listen], backends, scheduler);
    service.connect_timeout = args.connect_timeout;
    service.idle_timeout = args
        .idle_timeout
        .unwrap_or_else(|| Service::default_idle_timeout(protocol));
    service.max_connect_attempts = NonZeroU32::new(args.max_connect_attempts)
        .context("--max-connect-attempts must be at least 1")?;
    Ok(Config {
        services: vec![service],
    })
}

fn start_control() -> anyhow::Result<ControlRuntime> {
    ControlRuntime::start().context("cannot start the control thread")
}

/// Where changes to the served config come from.
#[derive(Clone, Copy)]
enum Changes<'a> {
    /// A file (reloads) or nothing (command-line flags).
    File(Option<Source<'a>>),
    /// The Kubernetes watch.
    Kube(&'a crate::node_mode::Kube),
}

/// Where a config comes from, for reloads.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    /// A ringlb YAML file, or Kubernetes manifests (file or directory).
    pub path: &'a Path,
    /// Where Kubernetes NodePorts listen.
    pub node_addresses: &'a [std::net::IpAddr],
    /// The `dns:` settings of the config as first loaded (reloads read them again).
    pub dns: &'a DnsConfig,
}

/// Logs the Kubernetes Services and ports that are valid but not proxied.
fn report_not_proxied(list: &[config::k8s::NotProxied]) {
    for np in list {
        tracing::info!(service = %np.name, "not proxied: {}", np.reason);
    }
}

/// What the control loop reacts to.
enum Control {
    /// Read the config file again (SIGHUP, or the file changed).
    Reload(&'static str),
    /// Stop accepting and drain (SIGTERM, SIGINT).
    Stop(i32),
    /// The addresses of a DNS-named backend changed.
    Resolved,
    /// The Kubernetes watch published a new model (`--kubernetes`).
    Kube,
}

/// DNS-named backends: the watch, started by the first config that names a host, and where
/// it reports changes.
struct Names {
    watch: Option<DnsWatch>,
    control: mpsc::Sender<Control>,
}

impl Names {
    /// Follows the host names of `config` (as written) with `dns`, waits briefly for the first
    /// answers of names new to it, and returns `config` expanded with the answers known now. A
    /// name without an answer is logged; its backends are left out until it resolves.
    fn follow(&mut self, config: &Config, dns: &DnsConfig) -> anyhow::Result<Config> {
        let names = config.host_names();
        if names.is_empty() && self.watch.is_none() {
            return Ok(config.clone());
        }
        let watch = match &mut self.watch {
            Some(watch) => watch,
            None => {
                let tx = self.control.clone();
                self.watch.insert(DnsWatch::start(move || {
                    let _ = tx.send(Control::Resolved);
                })?)
            }
        };
        // A and AAAA are asked at once; allow one retry after a lost query.
        let wait = dns.timeout * 2 + Duration::from_secs(1);
        watch.sync(dns, names.clone(), wait)?;
        let answers = watch.answers();
        for name in names.iter().filter(|n| !answers.contains_key(*n)) {
            tracing::warn!(%name, "DNS name not resolved yet: its backends are left out until it resolves");
        }
        Ok(config.expand(&answers))
    }

    /// `config` (as written) expanded with the latest answers.
    fn expand(&self, config: &Config) -> Config {
        match &self.watch {
            Some(watch) => config.expand(&watch.answers()),
            None => config.clone(),
        }
    }
}

/// Events arriving this soon after a reload trigger are folded into one reload (an editor's
/// save is several file system events).
const RELOAD_SETTLE: Duration = Duration::from_millis(100);

/// Starts the data plane for `config`, calls `on_ready` once every listener is bound, then
/// serves until SIGTERM or SIGINT and drains. With a `source` file, SIGHUP and every change to
/// the file reload it: a valid new config takes effect at once without disturbing established
/// connections; an invalid one is reported and the last good one keeps serving.
pub fn serve(
    config: Config,
    source: Option<Source<'_>>,
    reload: &ReloadArgs,
    dp: &DataPlaneArgs,
    admin: Option<AdminBind>,
    on_ready: impl FnOnce(&Proxy),
) -> anyhow::Result<()> {
    let control = start_control()?;
    let changes = Changes::File(source);
    serve_with(config, changes, &control, reload, dp, admin, on_ready)
}

/// [`serve`], with its changes from `changes` and its HTTP ports on `control`.
fn serve_with(
    mut config: Config,
    changes: Changes<'_>,
    control: &ControlRuntime,
    reload: &ReloadArgs,
    dp: &DataPlaneArgs,
    admin: Option<AdminBind>,
    on_ready: impl FnOnce(&Proxy),
) -> anyhow::Result<()> {
    let (source, kube) = match changes {
        Changes::File(source) => (source, None),
        Changes::Kube(kube) => (None, Some(kube)),
    };
    match proxy_core::raise_nofile_limit() {
        Ok(limit) => tracing::debug!(limit, "raised the open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    // A decision log file that cannot be opened fails the start.
    let decision_output = decisions::Output::open(dp.decision_log.as_deref())?;
    let reopen_decisions = decision_output.reopen_flag();
    // Registered before the workers start so that an early signal is not lost.
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;
    let (control_tx, control_rx) = mpsc::channel();
    let signal_tx = control_tx.clone();
    std::thread::Builder::new()
        .name("ringlb-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let event = if signal == SIGHUP {
                    // Like other daemons: SIGHUP also reopens the log file (logrotate).
                    reopen_decisions.store(true, Relaxed);
                    Control::Reload("SIGHUP")
                } else {
                    Control::Stop(signal)
                };
                if signal_tx.send(event).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the signal thread")?;
    let _watch = match source.filter(|_| !reload.no_watch) {
        Some(src) => {
            let tx = control_tx.clone();
            Some(config::FileWatch::new(src.path, move || {
                let _ = tx.send(Control::Reload("file changed"));
            })?)
        }
        None => None,
    };
    // Before the data plane: a taken admin port fails before any worker starts.
    let admin_listener = match admin {
        Some(bind) => admin::bind(bind)?,
        None => None,
    };
    let options = ProxyOptions {
        workers: dp
            .workers
            .map_or_else(|| ProxyOptions::default().workers, usize::from),
        io_driver: dp.io_driver.into(),
        share_ports: dp.share_port || dp.takeover.is_some(),
        busy_poll: dp.busy_poll.filter(|d| !d.is_zero()),
        udp_coalesce: Some(dp.udp_coalesce).filter(|d| !d.is_zero()),
        telemetry: !dp.no_telemetry,
        ..ProxyOptions::default()
    };
    if config.services.is_empty() {
        tracing::warn!("the config has no service to serve; waiting for a change to it");
    }
    // `last_good` is the config as written; `serving` is it expanded with DNS answers, before
    // port-0 frontends are bound (reloads compare and bind again from there).
    let mut last_good = config.clone();
    let mut dns = source.map(|s| s.dns.clone()).unwrap_or_default();
    let mut names = Names {
        watch: None,
        control: control_tx.clone(),
    };
    config = names.follow(&last_good, &dns)?;
    let mut serving = config.clone();
    if let Some(old) = dp.takeover {
        // Before binding: from the moment this process joins the port groups, the kernel may
        // hand it datagrams of the old process's flows.
        crate::takeover::start(old, Arc::clone(&options.handed_over))?;
    }
    let listeners = proxy_core::bind(&mut config, &options)?;
    let table = Arc::new(ArcSwap::from_pointee(Table::build(&config, None)));
    let plane = control.plane();
    let admin_state = Arc::new(AdminState::new(Arc::clone(&table), plane));
    let admin_server = admin_listener
        .map(|listener| admin::start(plane, listener, Arc::clone(&admin_state)))
        .transpose()?;
    let mut proxy = Proxy::start(Arc::clone(&table), listeners, &options)?;
    if let Some(kube) = kube {
        // Steered before `ready`: ready means traffic to the frontends arrives.
        kube.start_steering(&proxy)?;
    }
    let decision_writer = DecisionWriter::start(decision_output, proxy.telemetry())?;
    admin_state.attach(DataPlane {
        telemetry: proxy.telemetry(),
        decisions: decision_writer.control(),
        flows: proxy.flow_list(),
        fds: proxy.fd_budget(),
        panics: proxy.panics(),
    });
    admin_state.set_ready();
    let mut fds = DescriptorBudget::new(proxy.fd_budget());
    fds.refresh(&serving);
    announce(&proxy, &table.load());
    if let Some(server) = &admin_server {
        announce_line(&format!("admin addr={}", server.local_addr()));
        tracing::info!(addr = %server.local_addr(), "admin API listening");
    }
    on_ready(&proxy);
    if let Some(kube) = kube {
        let tx = control_tx.clone();
        kube.attach(move || {
            let _ = tx.send(Control::Kube);
        });
        // A change published while the data plane started.
        kube.apply(&mut proxy, &mut serving, reload.backend_drain_timeout);
    }

    let signal = loop {
        // Every table swap (reload, DNS change) happens in one turn of this loop.
        admin_state
            .telemetry
            .table_published(proxy.table().version());
        // Listeners may have come or gone: what the data plane may hold moves with them.
        fds.refresh(&serving);
        let mut why = match control_rx.recv() {
            Ok(Control::Kube) => {
                // The watch thread already folded the burst (node::SETTLE).
                if let Some(kube) = kube {
                    kube.apply(&mut proxy, &mut serving, reload.backend_drain_timeout);
                }
                continue;
            }
            Ok(Control::Reload(why)) => Some(why),
            Ok(Control::Resolved) => None,
            Ok(Control::Stop(signal)) => break signal,
            Err(_) => break SIGTERM,
        };
        // Fold the burst of events of one save into one reload; a stop request wins.
        let mut stop = None;
        while let Ok(event) = control_rx.recv_timeout(RELOAD_SETTLE) {
            match event {
                Control::Stop(signal) => {
                    stop = Some(signal);
                    break;
                }
                Control::Reload(w) => why = Some(w),
                Control::Resolved => {}
                Control::Kube => {
                    if let Some(kube) = kube {
                        kube.apply(&mut proxy, &mut serving, reload.backend_drain_timeout);
                    }
                }
            }
        }
        if let Some(signal) = stop {
            break signal;
        }
        let Some(why) = why else {
            // DNS answers changed: the same path as a reload, so only services whose
            // addresses changed are rebuilt and removed addresses drain like removed backends.
            let expanded = names.expand(&last_good);
            if expanded != serving {
                let changed: Vec<&str> = expanded
                    .services
                    .iter()
                    .filter(|s| !serving.services.contains(s))
                    .map(|s| s.name.as_str())
                    .collect();
                match proxy.reload(expanded.clone(), reload.backend_drain_timeout) {
                    Ok(report) => {
                        announce_line(&format!("resolved version={}", report.version));
                        tracing::info!(version = report.version, services = ?changed, "DNS answers changed; services rebuilt");
                        serving = expanded;
                    }
                    Err(e) => tracing::error!(
                        "new DNS answers not applied, the current backends keep serving: {e}"
                    ),
                }
            }
            continue;
        };
        let Some(src) = source else {
            tracing::info!(
                trigger = why,
                "nothing to reload: ringlb runs from command-line flags"
            );
            continue;
        };
        match config::load(src.path, src.node_addresses) {
            Ok(new) if new.config == last_good && new.dns == dns => {
                tracing::debug!(trigger = why, "config unchanged")
            }
            Ok(new) => match names.follow(&new.config, &new.dns).and_then(|expanded| {
                let report = proxy.reload(expanded.clone(), reload.backend_drain_timeout)?;
                Ok((report, expanded))
            }) {
                Ok((report, expanded)) => {
                    last_good = new.config;
                    dns = new.dns;
                    serving = expanded;
                    admin_state.telemetry.reload_succeeded();
                    announce_line(&format!("reloaded version={}", report.version));
                    tracing::info!(
                        trigger = why,
                        version = report.version,
                        added = ?report.added,
                        removed = ?report.removed,
                        "config reloaded"
                    );
                }
                Err(e) => {
                    let reload_failures = admin_state.telemetry.reload_failed();
                    tracing::error!(
                        trigger = why,
                        failures = reload_failures,
                        "reload failed, the last good config keeps serving: {e:#}"
                    );
                    announce_line(&format!("reload-failed failures={reload_failures}"));
                    // Follow the names of the config that keeps serving again.
                    if let Err(e) = names.follow(&last_good, &dns) {
                        tracing::error!("DNS names of the serving config: {e:#}");
                    }
                }
            },
            Err(e) => {
                let reload_failures = admin_state.telemetry.reload_failed();
                tracing::error!(
                    trigger = why,
                    failures = reload_failures,
                    "reload failed, the last good config keeps serving:\n{e}"
                );
                announce_line(&format!("reload-failed failures={reload_failures}"));
            }
        }
    };
    let name = if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    admin_state.set_draining();
    tracing::info!(signal = name, drain_timeout = ?dp.drain_timeout, "stopped accepting; draining open connections");
    let table = proxy.table();
    let report = proxy.shutdown(dp.drain_timeout);
    // The connections that ended while draining are logged before exit.
    decision_writer.stop();
    if report.workers_cut > 0 {
        tracing::warn!(
            workers = report.workers_cut,
            connections = report.connections_reset,
            "drain timeout reached: {} connections still open were reset on both sides",
            report.connections_reset
        );
    }
    for svc in table.services() {
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
    if let Some(server) = admin_server {
        server.stop();
    }
    Ok(())
}
