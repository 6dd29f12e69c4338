//! `ringlb run`: config in, data plane up, signals, drain. All of it runs on the control
//! runtime, which the main thread runs: every source of change is a task on it, and the loop
//! that applies the changes is the future the main thread blocks on.

mod changes;

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use balancers::SchedulerConfig;
use config::{Backend, Config, DnsConfig, Protocol, Service, ServiceDefaults, Table};
use proxy_core::{LocalSockets, Proxy, ProxyOptions, SocketSource};

use self::changes::{Changes, Control, Names, Running, Source, Started};
use crate::node_mode::Kube;
use control::Plane;

use crate::admin::{self, AdminBind, AdminState, DataPlane};
use crate::announce::{announce, announce_line};
use crate::budget::DescriptorBudget;
use crate::cli::{DataPlaneArgs, Proto, ReloadArgs, RunArgs};
use crate::decisions::{self, DecisionWriter};
use crate::link::{Link, ToMaster};
use control::ControlRuntime;

/// `ringlb run`'s data plane: the worker of a master (`link`), or a process on its own.
pub fn run(args: RunArgs, link: Option<Link>) -> anyhow::Result<()> {
    let sockets: Arc<dyn SocketSource> = match &link {
        Some(link) => link.sockets.clone(),
        None => Arc::new(LocalSockets),
    };
    let control = start_control(sockets)?;
    let plane = control.plane().clone();
    if args.kubernetes {
        return control.block_on(async {
            let (kube, config) = Kube::start(&args, &plane).await?;
            let admin = admin_bind(&args, None);
            let how = How {
                reload: &args.reload,
                dp: &args.data_plane,
                admin,
                link,
            };
            serve_with(config, Changes::Kube(Box::new(kube)), &plane, how, |_| {}).await
        });
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
    let how = How {
        reload: &args.reload,
        dp: &args.data_plane,
        admin: admin_bind(&args, admin_key),
        link,
    };
    control.block_on(serve_with(
        config,
        Changes::File(source),
        &plane,
        how,
        |_| {},
    ))
}

/// How to serve, besides what: the flags, and the master if any.
struct How<'a> {
    reload: &'a ReloadArgs,
    dp: &'a DataPlaneArgs,
    admin: Option<AdminBind>,
    /// The master this process is a worker of.
    link: Option<Link>,
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
    if !args.accept_proxy_protocol.is_empty() && protocol != Protocol::Tcp {
        bail!("--accept-proxy-protocol is for TCP (--proto tcp)");
    }
    if args.proxy_protocol == Some(config::ProxyProtocol::V1) && protocol != Protocol::Tcp {
        bail!("--proto udp sends --proxy-protocol v2 (its header starts every datagram); v1 is for TCP");
    }
    service.proxy_protocol = args.proxy_protocol;
    service.accept_proxy_protocol = args.accept_proxy_protocol.clone();
    service.health = args.health.check();
    service.outliers = args.health.outliers();
    if service.outliers.is_some() && protocol != Protocol::Tcp {
        bail!("--eject-after is for TCP (--proto tcp)");
    }
    service.slow_start = args.health.slow_start;
    if service.slow_start.is_some() && !balancers::SlowStart::applies_to(scheduler.kind) {
        bail!(
            "--slow-start ramps weights, and --scheduler {} does not weigh backends: \
             use wrr, wlc, sed or nq",
            scheduler.kind
        );
    }
    Ok(Config {
        services: vec![service],
    })
}

/// The control runtime, its HTTP ports' sockets from `sockets`.
fn start_control(sockets: Arc<dyn SocketSource>) -> anyhow::Result<ControlRuntime> {
    ControlRuntime::new(sockets).context("cannot start the control runtime")
}

/// Logs the Kubernetes Services and ports that are valid but not proxied.
fn report_not_proxied(list: &[config::k8s::NotProxied]) {
    for np in list {
        tracing::info!(service = %np.name, "not proxied: {}", np.reason);
    }
}

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
    let control = start_control(Arc::new(LocalSockets))?;
    let plane = control.plane().clone();
    let changes = Changes::File(source);
    let how = How {
        reload,
        dp,
        admin,
        link: None,
    };
    control.block_on(serve_with(config, changes, &plane, how, on_ready))
}

/// [`serve`], with its changes from `changes` and its HTTP ports on the control runtime of
/// `plane` (the one this runs on).
async fn serve_with(
    config: Config,
    changes: Changes<'_>,
    plane: &Plane,
    how: How<'_>,
    on_ready: impl FnOnce(&Proxy),
) -> anyhow::Result<()> {
    let How {
        reload,
        dp,
        admin,
        link,
    } = how;
    let (source, mut kube) = match changes {
        Changes::File(source) => (source, None),
        Changes::Kube(kube) => (None, Some(*kube)),
    };
    raise_nofile_limit();
    // A decision log file that cannot be opened fails the start.
    let decision_output = decisions::Output::open(dp.decision_log.as_deref())?;
    // Before the workers start, so that an early signal is not lost.
    let (control_tx, mut control_rx) = changes::listen(decision_output.reopen_flag())?;
    if let Some(src) = source.filter(|_| !reload.no_watch) {
        changes::watch_file(src.path, control_tx.clone())?;
    }
    // Before the data plane: a taken admin port fails before any worker starts.
    let admin_listener = match admin {
        Some(bind) => admin::bind(plane, bind)?,
        None => None,
    };
    if config.services.is_empty() {
        tracing::warn!("the config has no service to serve; waiting for a change to it");
    }
    let dns = source.map(|s| s.dns.clone()).unwrap_or_default();
    let mut names = Names::new(control_tx.clone());
    // `config` is as written; `serving` is it expanded with DNS answers, before port-0
    // frontends are bound (reloads compare and bind again from there).
    let serving = names.follow(&config, &dns).await?;
    let mut options = proxy_options(dp);
    options.sockets = Arc::clone(&plane.sockets);
    options.udp_held = link.as_ref().is_some_and(|l| l.held);
    let master = link.map(|l| listen_to_master(l, &control_tx)).transpose()?;
    if let Some(old) = dp.takeover {
        // Before binding: from the moment this process joins the port groups, the kernel may
        // hand it datagrams of the old process's flows.
        crate::takeover::start(old, Arc::clone(&options.handed_over)).await;
    }
    let started = start_data_plane(
        &serving,
        &options,
        plane,
        admin_listener,
        kube.as_mut(),
        decision_output,
    )
    .await?;
    on_ready(&started.proxy);
    watch_backends(&started.proxy);
    if let Some(master) = &master {
        master.ready().await;
    }
    let mut running = Running {
        started,
        last_good: config,
        serving,
        dns,
        names,
        source,
        kube,
        backend_drain: reload.backend_drain_timeout,
        master,
        handed_over: Arc::clone(&options.handed_over),
    };
    if running.kube.is_some() {
        running.attach_kube(control_tx.clone()).await;
    }
    let stop = running.until_stop(&mut control_rx).await;
    running.drain(stop, dp.drain_timeout).await;
    Ok(())
}

/// Starts the health checks and the readmission of ejected backends, on the control runtime
/// for as long as it runs (the process's life).
fn watch_backends(proxy: &Proxy) {
    let sessions = proxy.session_cutter();
    let cut: control::checks::Cut = Arc::new(move |backend| sessions.cut(backend));
    drop(control::checks::spawn(
        proxy.published(),
        cut,
        proxy.telemetry(),
    ));
    drop(control::ejections::spawn(
        proxy.published(),
        proxy.telemetry(),
    ));
    drop(control::slow_start::spawn(proxy.published()));
}

/// Passes what the master says to the control loop, as [`Control::Master`].
fn listen_to_master(mut link: Link, control_tx: &changes::Events) -> anyhow::Result<ToMaster> {
    let to = control_tx.clone();
    link.listen(move |m| {
        let _ = to.send(Control::Master(m));
    })
}

/// Binds `serving`'s frontends and starts the workers, the admin API (on `admin_listener`,
/// on the control runtime of `plane`) and the decision log; with node mode writes the first
/// nftables tables, since `ready` means traffic to the frontends arrives. Then says `ready`.
async fn start_data_plane(
    serving: &Config,
    options: &ProxyOptions,
    plane: &Plane,
    admin_listener: Option<std::net::TcpListener>,
    kube: Option<&mut Kube>,
    decision_output: decisions::Output,
) -> anyhow::Result<Started> {
    let mut bound = serving.clone();
    let listeners = proxy_core::bind(&mut bound, options)?;
    let table = Arc::new(ArcSwap::from_pointee(Table::build(&bound, None)));
    let admin_state = Arc::new(AdminState::new(Arc::clone(&table), plane));
    let admin_server = admin_listener
        .map(|listener| admin::start(plane, listener, Arc::clone(&admin_state)))
        .transpose()?;
    let proxy = Proxy::start(Arc::clone(&table), listeners, options).await?;
    if let Some(kube) = kube {
        kube.start_steering(&proxy).await?;
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
    fds.refresh(serving, proxy.table().version());
    announce(&proxy, &table.load());
    if let Some(server) = &admin_server {
        announce_line(&format!("admin addr={}", server.local_addr()));
        tracing::info!(addr = %server.local_addr(), "admin API listening");
    }
    Ok(Started {
        proxy,
        admin_state,
        admin_server,
        decisions: decision_writer,
        fds,
    })
}

/// Raises the open file limit as far as it goes (logged).
fn raise_nofile_limit() {
    match proxy_core::raise_nofile_limit() {
        Ok(limit) => tracing::debug!(limit, "raised the open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
}

/// How the data plane runs, from the flags.
fn proxy_options(dp: &DataPlaneArgs) -> ProxyOptions {
    ProxyOptions {
        workers: dp
            .workers
            .map_or_else(|| ProxyOptions::default().workers, usize::from),
        io_driver: dp.io_driver.into(),
        share_ports: dp.share_port || dp.takeover.is_some(),
        busy_poll: dp.busy_poll.filter(|d| !d.is_zero()),
        udp_coalesce: Some(dp.udp_coalesce).filter(|d| !d.is_zero()),
        telemetry: !dp.no_telemetry,
        ..ProxyOptions::default()
    }
}
