//! What changes the served config while ringlb runs, and the loop that applies it: signals
//! (SIGHUP reloads, SIGTERM and SIGINT stop), the config file, the answers for DNS-named
//! backends, node mode's API watch. Each source is a task on the control runtime that sends
//! its events to the loop; every table swap happens in one turn of the loop.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use config::{Config, DnsConfig, DnsWatch};
use proxy_core::{Count, HandedOver, Proxy};
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::admin::{AdminState, UdpFlowsView};
use crate::announce::announce_line;
use crate::budget::DescriptorBudget;
use crate::decisions::DecisionWriter;
use crate::link::ToMaster;
use crate::master::wire::{FromWorker, ToWorker};
use crate::node_mode::Kube;
use crate::reload::swap;
use control::http::HttpServer;

/// After the drain deadline, how long the workers get to reset what is still open and count
/// it, and then to end.
const CUT_WAIT: Duration = Duration::from_secs(2);

/// Where changes to the served config come from.
pub(super) enum Changes<'a> {
    /// A file (reloads) or nothing (command-line flags).
    File(Option<Source<'a>>),
    /// The Kubernetes watch.
    Kube(Box<Kube>),
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

/// What the serve loop reacts to.
pub(super) enum Control {
    /// Read the config file again (SIGHUP, or the file changed).
    Reload(&'static str),
    /// Stop accepting and drain (SIGTERM, SIGINT).
    Stop(i32),
    /// The addresses of a DNS-named backend changed.
    Resolved,
    /// The Kubernetes watch published a new model (`--kubernetes`).
    Kube,
    /// What the master said (this process is its worker).
    Master(ToWorker),
}

/// Why the serve loop ended.
#[derive(Clone, Copy, Debug)]
pub(super) enum Stop {
    /// SIGTERM or SIGINT.
    Signal(i32),
    /// The master handed the sockets to a successor.
    HandOver,
}

/// Where the loop hears of changes.
pub(super) type Events = UnboundedSender<Control>;

/// DNS-named backends: the watch, started by the first config that names a host, and where
/// it reports changes.
pub(super) struct Names {
    watch: Option<DnsWatch>,
    control: Events,
}

impl Names {
    /// No names followed yet; `control` hears when their answers change.
    pub(super) fn new(control: Events) -> Names {
        Names {
            watch: None,
            control,
        }
    }

    /// Follows the host names of `config` (as written) with `dns`, waits briefly for the first
    /// answers of names new to it, and returns `config` expanded with the answers known now. A
    /// name without an answer is logged; its backends are left out until it resolves.
    pub(super) async fn follow(
        &mut self,
        config: &Config,
        dns: &DnsConfig,
    ) -> anyhow::Result<Config> {
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
                }))
            }
        };
        // A and AAAA are asked at once; allow one retry after a lost query.
        let wait = dns.timeout * 2 + Duration::from_secs(1);
        watch.sync(dns, names.clone(), wait).await?;
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

/// The trigger of a reload `ringlb reload` asked for.
const ASKED: &str = "ringlb reload";

/// Events arriving this soon after a reload trigger are folded into one reload (an editor's
/// save is several file system events).
const RELOAD_SETTLE: Duration = Duration::from_millis(100);

/// Registers for SIGTERM, SIGINT and SIGHUP and turns them into [`Control`] events, in a task
/// on the current runtime; SIGHUP also raises `reopen` (the decision log reopens its file, for
/// logrotate). Returns where the events go and where the loop hears them.
pub(super) fn listen(
    reopen: Arc<AtomicBool>,
) -> anyhow::Result<(Events, UnboundedReceiver<Control>)> {
    let register = |kind| signal(kind).context("cannot install signal handlers");
    let mut term = register(SignalKind::terminate())?;
    let mut int = register(SignalKind::interrupt())?;
    let mut hup = register(SignalKind::hangup())?;
    let (control_tx, control_rx) = unbounded_channel();
    let to = control_tx.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = term.recv() => Control::Stop(SIGTERM),
                _ = int.recv() => Control::Stop(SIGINT),
                _ = hup.recv() => {
                    // Like other daemons: SIGHUP also reopens the log file (logrotate).
                    reopen.store(true, Relaxed);
                    Control::Reload("SIGHUP")
                }
            };
            if to.send(event).is_err() {
                return;
            }
        }
    });
    Ok((control_tx, control_rx))
}

/// Watches the config file at `path` in a task on the current runtime: every change sends a
/// reload to `control`.
pub(super) fn watch_file(path: &Path, control: Events) -> anyhow::Result<()> {
    let mut watch = config::FileWatch::new(path)?;
    tokio::spawn(async move {
        loop {
            if let Err(e) = watch.changed().await {
                tracing::error!("{e}: the config is reloaded on SIGHUP only from now on");
                return;
            }
            if control.send(Control::Reload("file changed")).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// The data plane serving, with the admin API and the decision log on it.
pub(super) struct Started {
    pub(super) proxy: Proxy,
    pub(super) admin_state: Arc<AdminState>,
    pub(super) admin_server: Option<HttpServer>,
    pub(super) decisions: DecisionWriter,
    /// What the data plane may hold, kept in line with its listeners.
    pub(super) fds: DescriptorBudget,
}

/// The running data plane with what the loop changes and compares.
pub(super) struct Running<'a> {
    pub(super) started: Started,
    /// The config as written (file or flags), which a reload compares with.
    pub(super) last_good: Config,
    /// `last_good` expanded with DNS answers (or node mode's model), before port-0 frontends
    /// are bound: what the data plane serves.
    pub(super) serving: Config,
    /// The `dns:` settings of `last_good`.
    pub(super) dns: DnsConfig,
    pub(super) names: Names,
    /// The file to reload, if any.
    pub(super) source: Option<Source<'a>>,
    /// Node mode's watch.
    pub(super) kube: Option<Kube>,
    /// `--backend-drain-timeout`.
    pub(super) backend_drain: Option<Duration>,
    /// The master, when this process is its worker.
    pub(super) master: Option<ToMaster>,
    /// Where a predecessor's UDP flows go (see [`ToWorker::Pins`]).
    pub(super) handed_over: Arc<HandedOver>,
}

impl Running<'_> {
    /// Applies changes as `rx` tells of them until a stop; returns what stopped it.
    pub(super) async fn until_stop(&mut self, rx: &mut UnboundedReceiver<Control>) -> Stop {
        // A `ringlb reload` waits for the outcome of the next reload.
        let mut asked = false;
        loop {
            // Every table swap (reload, DNS change) happens in one turn of this loop.
            self.started
                .admin_state
                .telemetry
                .table_published(self.started.proxy.table().version());
            // Listeners may have come or gone: what the data plane may hold moves with them.
            let version = self.started.proxy.table().version();
            self.started.fds.refresh(&self.serving, version);
            let mut why = match rx.recv().await {
                Some(Control::Kube) => {
                    // The watch already folded the burst (node::SETTLE).
                    self.apply_kube().await;
                    continue;
                }
                Some(Control::Reload(why)) => Some(why),
                Some(Control::Master(ToWorker::Reload)) => {
                    asked = true;
                    Some(ASKED)
                }
                Some(Control::Resolved) => None,
                Some(Control::Stop(signal)) => return Stop::Signal(signal),
                Some(Control::Master(ToWorker::HandOver)) => return Stop::HandOver,
                Some(Control::Master(ToWorker::Pins(view))) => {
                    self.pin(view);
                    continue;
                }
                None => return Stop::Signal(SIGTERM),
            };
            // Fold the burst of events of one save into one reload; a stop request wins.
            while let Ok(Some(event)) = tokio::time::timeout(RELOAD_SETTLE, rx.recv()).await {
                match event {
                    Control::Stop(signal) => return Stop::Signal(signal),
                    Control::Master(ToWorker::HandOver) => return Stop::HandOver,
                    Control::Master(ToWorker::Pins(view)) => self.pin(view),
                    Control::Reload(w) => why = Some(w),
                    Control::Master(ToWorker::Reload) => {
                        asked = true;
                        why = Some(ASKED);
                    }
                    Control::Resolved => {}
                    Control::Kube => self.apply_kube().await,
                }
            }
            match why {
                Some(why) => {
                    let outcome = self.reload(why).await;
                    if std::mem::take(&mut asked) {
                        if let Some(master) = &self.master {
                            master.say(&FromWorker::Reloaded(outcome)).await;
                        }
                    }
                }
                None => self.resolved().await,
            }
        }
    }

    /// The predecessor's UDP flows: their clients keep their backends; then the UDP
    /// frontends start reading.
    fn pin(&mut self, view: UdpFlowsView) {
        let flows = view.into_infos();
        self.handed_over.add(&flows, std::time::Instant::now());
        self.started.proxy.open_udp();
        tracing::info!(
            flows = flows.len(),
            "serving: UDP flows taken over from the previous worker"
        );
    }

    /// Tells node mode to send a [`Control::Kube`] to `control` after every change from now
    /// on, and serves a change published while the data plane started.
    pub(super) async fn attach_kube(&mut self, control: Events) {
        if let Some(kube) = &self.kube {
            kube.attach(move || {
                let _ = control.send(Control::Kube);
            });
        }
        self.apply_kube().await;
    }

    /// Serves node mode's latest model.
    async fn apply_kube(&mut self) {
        if let Some(kube) = &mut self.kube {
            kube.apply(
                &mut self.started.proxy,
                &mut self.serving,
                self.backend_drain,
            )
            .await;
        }
    }

    /// DNS answers changed: the same path as a reload, so only services whose addresses
    /// changed are rebuilt and removed addresses drain like removed backends.
    async fn resolved(&mut self) {
        let expanded = self.names.expand(&self.last_good);
        if expanded == self.serving {
            return;
        }
        let changed: Vec<&str> = expanded
            .services
            .iter()
            .filter(|s| !self.serving.services.contains(s))
            .map(|s| s.name.as_str())
            .collect();
        match swap(
            &mut self.started.proxy,
            expanded.clone(),
            self.backend_drain,
        )
        .await
        {
            Ok(report) => {
                announce_line(&format!("resolved version={}", report.version));
                tracing::info!(version = report.version, services = ?changed, "DNS answers changed; services rebuilt");
                self.serving = expanded;
            }
            Err(e) => tracing::error!(
                "new DNS answers not applied, the current backends keep serving: {e}"
            ),
        }
    }

    /// Reads the config file again (`why` triggered it); a new valid config is served, an
    /// invalid one is reported and the last good one keeps serving. Returns the table version
    /// served, or why the new config was not.
    async fn reload(&mut self, why: &'static str) -> Result<u64, String> {
        let Some(src) = self.source else {
            let nothing = "nothing to reload: ringlb runs from command-line flags or the \
                           Kubernetes API, not from a config file";
            tracing::info!(trigger = why, "{nothing}");
            return Err(nothing.to_owned());
        };
        let new = match config::load(src.path, src.node_addresses) {
            Ok(new) if new.config == self.last_good && new.dns == self.dns => {
                tracing::debug!(trigger = why, "config unchanged");
                return Ok(self.started.proxy.table().version());
            }
            Ok(new) => new,
            Err(e) => {
                let reload_failures = self.started.admin_state.telemetry.reload_failed();
                tracing::error!(
                    trigger = why,
                    failures = reload_failures,
                    "reload failed, the last good config keeps serving:\n{e}"
                );
                announce_line(&format!("reload-failed failures={reload_failures}"));
                return Err(e.to_string());
            }
        };
        let applied = match self.names.follow(&new.config, &new.dns).await {
            Ok(expanded) => swap(
                &mut self.started.proxy,
                expanded.clone(),
                self.backend_drain,
            )
            .await
            .map(|report| (report, expanded))
            .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match applied {
            Ok((report, expanded)) => {
                self.last_good = new.config;
                self.dns = new.dns;
                self.serving = expanded;
                self.started.admin_state.telemetry.reload_succeeded();
                announce_line(&format!("reloaded version={}", report.version));
                tracing::info!(
                    trigger = why,
                    version = report.version,
                    added = ?report.added,
                    removed = ?report.removed,
                    "config reloaded"
                );
                Ok(report.version)
            }
            Err(e) => {
                let why_failed = format!("{e:#}");
                let reload_failures = self.started.admin_state.telemetry.reload_failed();
                tracing::error!(
                    trigger = why,
                    failures = reload_failures,
                    "reload failed, the last good config keeps serving: {why_failed}"
                );
                announce_line(&format!("reload-failed failures={reload_failures}"));
                // Follow the names of the config that keeps serving again.
                if let Err(e) = self.names.follow(&self.last_good, &self.dns).await {
                    tracing::error!("DNS names of the serving config: {e:#}");
                }
                Err(why_failed)
            }
        }
    }

    /// Stops accepting (or hands the sockets over), lets open connections finish until
    /// `timeout`, resets what is left, then writes the last decisions and logs what was reset
    /// and each service's totals.
    pub(super) async fn drain(self, stop: Stop, timeout: Duration) {
        let Running {
            started,
            kube,
            master,
            ..
        } = self;
        let Started {
            mut proxy,
            admin_state,
            mut admin_server,
            decisions,
            ..
        } = started;
        admin_state.set_draining();
        match stop {
            Stop::Signal(signal) => {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                tracing::info!(signal = name, drain_timeout = ?timeout, "stopped accepting; draining open connections");
                proxy.stop_accepting();
            }
            Stop::HandOver => {
                let flows = proxy.hand_over().await;
                if let Some(master) = &master {
                    master.flows(UdpFlowsView::new(true, &flows)).await;
                }
                // The successor answers on the HTTP ports, watches the API and writes the
                // tables from now on.
                if let Some(server) = admin_server.take() {
                    server.stop().await;
                }
                drop(kube);
                tracing::info!(udp_flows = flows.len(), drain_timeout = ?timeout, "handed over to the new worker; draining open connections");
            }
        }
        let table = proxy.table();
        let telemetry = proxy.telemetry();
        proxy.stop_accepting();
        if tokio::time::timeout(timeout, proxy.drained())
            .await
            .is_err()
        {
            let workers = proxy.workers_drained();
            let reset = tokio::time::timeout(CUT_WAIT, proxy.cut())
                .await
                .unwrap_or_default();
            let _ = tokio::time::timeout(CUT_WAIT, proxy.drained()).await;
            tracing::warn!(
                workers = proxy.drivers().len() - workers,
                connections = reset,
                "drain timeout reached: {reset} connections still open were reset on both sides"
            );
        }
        proxy.join();
        // The connections that ended while draining are logged before exit.
        decisions.stop();
        // After the drain: every connection that ended is counted.
        let counts = telemetry.snapshot();
        for svc in table.services() {
            let c = counts.service(svc);
            tracing::info!(
                service = %svc.service.name,
                accepted = c.count(Count::Accepted),
                connect_failed = c.count(Count::ConnectFailed),
                no_backend = c.count(Count::NoBackend),
                connect_retries = c.count(Count::ConnectRetries),
                idle_timeouts = c.count(Count::IdleTimeouts),
                bytes_to_backend = c.count(Count::BytesToBackend),
                bytes_to_client = c.count(Count::BytesToClient),
                "service totals"
            );
        }
        if let Some(server) = admin_server {
            server.stop().await;
        }
    }
}
