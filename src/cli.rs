//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::driver_arg::DriverArg;
use balancers::SchedulerKind;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use node::NodePortAddress;

/// ringlb: an io_uring L4 (TCP) load balancer with IPVS-style schedulers.
#[derive(Debug, Parser)]
#[command(name = "ringlb", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing env-filter syntax, e.g. `info`, `debug`, `proxy_core=debug`);
    /// the RINGLB_LOG environment variable is used when this is not given.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once at start and moved once: the size of `RunArgs` costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Serve: either one service from flags (--listen/--to) or every service of a config file.
    Run(RunArgs),
    /// Validate a config and print what would be served (exit 0 valid, 1 invalid).
    Check {
        /// A ringlb YAML file, or Kubernetes manifests (a file or a directory).
        #[arg(long, short = 'c', value_name = "PATH")]
        config: PathBuf,

        /// Node addresses for Kubernetes NodePorts (as for `run`).
        #[arg(long = "node-address", value_name = "IP", value_delimiter = ',')]
        node_addresses: Vec<std::net::IpAddr>,
    },
    /// Start local demo backends and ringlb in front of them from an embedded config, send a
    /// burst of traffic, print the spread and latency, then keep serving until Ctrl-C.
    Demo(DemoArgs),
    /// Upgrade the running ringlb in place (as `kill -USR2 MASTER`): its master executes the
    /// binary at its path again with the same arguments, keeping its PID, and a worker of the
    /// new binary takes every listening socket over; the old worker drains. Exit 0 once the
    /// new worker serves; 1, with the reason, when the upgrade failed (the old worker keeps
    /// serving).
    Upgrade {
        /// The master's handover socket (as given to `ringlb run`).
        #[arg(long, value_name = "PATH")]
        handover_socket: Option<PathBuf>,
    },
    /// Reload the running ringlb's config file (as `kill -HUP MASTER`), and say how it went:
    /// exit 0 with the table version now served, 1 with the reason when the new config was
    /// refused (the last good one keeps serving).
    Reload {
        /// The master's handover socket (as given to `ringlb run`).
        #[arg(long, value_name = "PATH")]
        handover_socket: Option<PathBuf>,
    },
    /// Measure: a load against any address, with latency percentiles (open loop on a
    /// timetable, or closed loop), throughput and errors.
    Bench {
        #[command(subcommand)]
        command: crate::bench::BenchCommand,
    },
    /// Delete what node mode leaves in the kernel for its successor, as kube-proxy's
    /// --cleanup: the nftables tables `ip ringlb` and `ip6 ringlb`, and the policy rule and
    /// routes of --preserve-client-ip. Refuses while a ringlb answers at the handover socket.
    Cleanup {
        /// The handover socket of the ringlb that must not be running.
        #[arg(long, value_name = "PATH")]
        handover_socket: Option<PathBuf>,

        /// The packet mark --preserve-client-ip used.
        #[arg(long, value_name = "HEX", default_value = "0x200000", value_parser = parse_mark)]
        client_ip_mark: u32,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["config", "listen", "kubernetes"])))]
#[command(group(ArgGroup::new("services").multiple(true).args(["config", "kubernetes"])))]
pub struct RunArgs {
    /// Config: a ringlb YAML file, or Kubernetes Service/Endpoints/EndpointSlice manifests (a
    /// file or a directory of them).
    #[arg(long, short = 'c', value_name = "PATH", conflicts_with_all = ["listen", "to"])]
    pub config: Option<PathBuf>,

    /// Node addresses on which Kubernetes NodePort and LoadBalancer services listen at their
    /// nodePort (repeat, or comma-separate). With --kubernetes, loopback addresses are left
    /// out (they never take NodePorts).
    #[arg(
        long = "node-address",
        value_name = "IP",
        value_delimiter = ',',
        requires = "services"
    )]
    pub node_addresses: Vec<std::net::IpAddr>,

    /// Kubernetes node mode: serve the cluster's Services from the API (Services and
    /// EndpointSlices, watched), as kube-proxy does. In-cluster config unless --kubeconfig.
    #[arg(long, conflicts_with_all = ["config", "listen", "to"])]
    pub kubernetes: bool,

    /// With --kubernetes: a kubeconfig file instead of the in-cluster config.
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,

    /// With --kubernetes: this node's name, for traffic policy Local and topology
    /// [default: the NODE_NAME environment variable].
    #[arg(long, value_name = "NAME", requires = "kubernetes")]
    pub node_name: Option<String>,

    /// With --kubernetes: serve only Services labelled
    /// service.kubernetes.io/service-proxy-name=NAME (to run beside kube-proxy). Default:
    /// only Services without that label, as kube-proxy.
    #[arg(long, value_name = "NAME", requires = "kubernetes")]
    pub service_proxy_name: Option<String>,

    /// With --kubernetes: steer traffic for cluster IPs, external IPs, load balancer IPs and
    /// node addresses at node ports to ringlb through its own nftables tables (`ip ringlb`
    /// and `ip6 ringlb`, replaced at start, left at exit for the next ringlb: `ringlb cleanup`
    /// deletes them; needs CAP_NET_ADMIN and the `nft` program).
    /// Without it, ringlb binds those addresses itself, so they must be local.
    #[arg(long, requires = "kubernetes")]
    pub nftables: bool,

    /// With --kubernetes: where NodePorts are served besides --node-address, as kube-proxy's
    /// `--nodeport-addresses`: `primary`, this node's primary address of each family (its
    /// Node's first InternalIP, else ExternalIP, followed as the Node changes), or this host's
    /// interface addresses within these CIDRs (repeat, or comma-separate; read again every
    /// 2 s). Loopback addresses never take NodePorts.
    /// [default: primary, unless --node-address is given]
    #[arg(
        long,
        value_name = "primary|CIDR",
        value_delimiter = ',',
        value_parser = parse_nodeport_address,
        requires = "kubernetes"
    )]
    pub nodeport_addresses: Vec<NodePortAddress>,

    /// With --nftables: the pods' address ranges (repeat, or comma-separate), as
    /// kube-proxy's `--cluster-cidr` with `--detect-local-mode=ClusterCIDR`. Traffic from them
    /// (and from the node itself) to the external IPs, load balancer IPs and node ports of an
    /// `externalTrafficPolicy: Local` service goes to its endpoints cluster-wide, as
    /// kube-proxy short-circuits it; without this option, only the node's own traffic is.
    #[arg(
        long,
        value_name = "CIDR",
        value_delimiter = ',',
        requires = "nftables"
    )]
    pub cluster_cidr: Vec<ipnet::IpNet>,

    /// With --nftables and --cluster-cidr: backends see the client's address (UDP: and port)
    /// where kube-proxy keeps it: a pod's (in --cluster-cidr) on every frontend, an outside
    /// client's on the external frontends of `externalTrafficPolicy: Local` ports. ringlb
    /// connects from it (`IP_TRANSPARENT`) and steers the replies back to itself with a
    /// packet mark, a policy rule and routing table 2400 (`ip rule`/`ip route`, set at
    /// start, left at exit as the tables are).
    #[arg(long, requires_all = ["nftables", "cluster_cidr"])]
    pub preserve_client_ip: bool,

    /// With --preserve-client-ip: pods' connections leave from this node's address after
    /// all; only outside clients of `externalTrafficPolicy: Local` ports keep theirs (for a
    /// pod network where a pod's reply to a pod on the same node does not pass the node's
    /// routing, such as a Linux bridge).
    #[arg(long, requires = "preserve_client_ip")]
    pub no_transparent: bool,

    /// The packet mark bit(s) of --preserve-client-ip; pick one your CNI does not use.
    #[arg(long, value_name = "HEX", default_value = "0x200000", value_parser = parse_mark)]
    pub client_ip_mark: u32,

    /// With --kubernetes: where the node health server answers `/healthz` and `/livez` like
    /// kube-proxy's (200 while the last change from the API is in effect, else 503), e.g.
    /// 0.0.0.0:10256 as kube-proxy. Default: none.
    #[arg(long, value_name = "ADDR", requires = "kubernetes")]
    pub healthz_bind_address: Option<std::net::SocketAddr>,

    /// Quick mode: the address to listen on (IP:port; port 0 picks a free port).
    #[arg(long, value_name = "ADDR", requires = "to")]
    pub listen: Option<SocketAddr>,

    /// Quick mode: backends, comma-separated IP:port list.
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',', num_args = 1.., requires = "listen")]
    pub to: Vec<SocketAddr>,

    /// Quick mode: protocol.
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    pub proto: Proto,

    /// Quick mode: scheduler.
    #[arg(long, default_value = "rr", value_parser = parse_scheduler)]
    pub scheduler: SchedulerKind,

    /// Quick mode: deadline of one connect attempt to a backend.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = config::parse_positive_duration)]
    pub connect_timeout: Duration,

    /// Quick mode: close a connection (end a UDP flow) after this long with nothing moving in
    /// either direction [default: 1h for tcp, 60s for udp].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_positive_duration)]
    pub idle_timeout: Option<Duration>,

    /// Quick mode: backends tried per client connection before the client is reset.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub max_connect_attempts: u32,

    /// Quick mode: send each backend a PROXY protocol header (v1 text or v2 binary) naming
    /// the client, before the client's bytes (UDP: v2, before every datagram).
    #[arg(long, value_name = "v1|v2", value_parser = parse_proxy_protocol)]
    pub proxy_protocol: Option<config::ProxyProtocol>,

    /// Quick mode, TCP: read a PROXY protocol header (v1 or v2) from clients in these ranges
    /// (front load balancers) and take the client it names; reset connections from elsewhere.
    #[arg(long, value_name = "CIDR[,CIDR...]", value_delimiter = ',', value_parser = parse_range)]
    pub accept_proxy_protocol: Vec<ipnet::IpNet>,

    #[command(flatten)]
    pub health: HealthArgs,

    /// The master's handover socket: `ringlb upgrade` asks the master through it, and a new
    /// ringlb started with the same path (a new pod of the DaemonSet) takes every listening
    /// socket over from the running one. [default: handover.sock in $RUNTIME_DIRECTORY, else
    /// in $XDG_RUNTIME_DIR/ringlb, else in /run/ringlb as root]
    #[arg(long, value_name = "PATH")]
    pub handover_socket: Option<PathBuf>,

    /// Admin HTTP API (/metrics, /healthz, /readyz, /config, /stats): IP:port, or off.
    /// Default: the config's `admin:` key, else 127.0.0.1:9901 with --config; off in quick mode.
    #[arg(long, value_name = "ADDR|off", value_parser = parse_admin)]
    pub admin: Option<config::Admin>,

    #[command(flatten)]
    pub reload: ReloadArgs,

    #[command(flatten)]
    pub data_plane: DataPlaneArgs,
}

/// Quick mode: active health checks of the backends.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Quick mode: check every backend with a TCP connect (`tcp`) or an HTTP GET of PATH
    /// answered 2xx or 3xx (`http:PATH`); a backend failing --fall checks in a row takes no
    /// new connections until it passes --rise.
    #[arg(long, value_name = "tcp|http:PATH", value_parser = parse_probe)]
    pub health_check: Option<config::Probe>,

    /// Quick mode: time between two checks of a backend (±10 %).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = config::parse_positive_duration, requires = "health_check")]
    pub health_interval: Duration,

    /// Quick mode: how long one check may take.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = config::parse_positive_duration, requires = "health_check")]
    pub health_timeout: Duration,

    /// Quick mode: consecutive passed checks that bring a down backend up.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100), requires = "health_check")]
    pub rise: u32,

    /// Quick mode: consecutive failed checks that take a backend down.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100), requires = "health_check")]
    pub fall: u32,

    /// Quick mode: what a backend marked down does with its open connections and UDP flows:
    /// `keep` them until they end, or `shutdown-sessions` (reset them at once).
    #[arg(long, value_name = "keep|shutdown-sessions", default_value = "keep", value_parser = ["keep", "shutdown-sessions"], requires = "health_check")]
    pub on_marked_down: String,

    /// Quick mode, TCP: eject a backend after N failures in a row seen by the workers (a
    /// failed connect, a reset before its first byte back); 0 is off.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub eject_after: u32,

    /// Quick mode: how long a first ejection lasts (the nth lasts n times as long, at most
    /// 5 minutes).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = config::parse_positive_duration)]
    pub eject_time: Duration,

    /// Quick mode: the most of the backends ejected at once, in percent (always one).
    #[arg(long, value_name = "PERCENT", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_eject_percent: u32,

    /// Quick mode: a backend that comes back (marked up, readmitted) ramps its weight from
    /// a sixteenth to all of it over DURATION; for --scheduler wrr, wlc, sed or nq.
    #[arg(long, value_name = "DURATION", value_parser = config::parse_positive_duration)]
    pub slow_start: Option<Duration>,
}

impl HealthArgs {
    /// The outlier detection these flags ask for.
    pub fn outliers(&self) -> Option<config::Outliers> {
        (self.eject_after > 0).then_some(config::Outliers {
            after: self.eject_after,
            time: self.eject_time,
            max_percent: self.max_eject_percent,
        })
    }

    /// The checks these flags ask for.
    pub fn check(&self) -> Option<config::HealthCheck> {
        let probe = self.health_check.clone()?;
        Some(config::HealthCheck {
            interval: self.health_interval,
            down_interval: self.health_interval,
            timeout: self.health_timeout,
            rise: self.rise,
            fall: self.fall,
            shutdown_sessions: self.on_marked_down == "shutdown-sessions",
            ..config::HealthCheck::new(probe)
        })
    }
}

fn parse_probe(s: &str) -> Result<config::Probe, String> {
    config::Probe::parse(s)
        .ok_or_else(|| format!("{s:?}: use tcp, or http:PATH with PATH starting with /"))
}

/// How a config file is reloaded.
#[derive(Debug, Default, Args)]
pub struct ReloadArgs {
    /// With --config: reload only on SIGHUP, not whenever the file changes.
    #[arg(long)]
    pub no_watch: bool,

    /// After a reload removed a backend, close its open connections this long after the
    /// reload (default: let them run until they end or reach their idle timeout).
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    pub backend_drain_timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct DataPlaneArgs {
    /// Worker threads, each its own runtime and listeners (default: one per CPU).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// I/O driver: io_uring when available (auto), io_uring or fail (uring), or epoll.
    #[arg(long, value_enum, default_value_t = DriverArg::Auto)]
    pub io_driver: DriverArg,

    /// On SIGTERM/SIGINT, how long open connections may keep going before exit.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = config::parse_duration)]
    pub drain_timeout: Duration,

    /// Join another process's SO_REUSEPORT group on a listen port on purpose (e.g. a zero
    /// downtime restart). Without it a taken port is an error.
    #[arg(long)]
    pub share_port: bool,

    /// Restart without re-balancing UDP flows: read the live UDP flows of the ringlb being
    /// replaced from its admin API at ADDR (`GET /udp/flows`) before binding, and keep each
    /// of those clients on its backend. Implies --share-port.
    #[arg(long, value_name = "ADDR")]
    pub takeover: Option<SocketAddr>,

    /// Low-latency UDP: after each relayed datagram, keep the worker polling for up to this
    /// long (e.g. 50us) before it sleeps. Cuts the cross-core wake-up from each datagram's
    /// latency; keeps a core busy while traffic arrives at least that often. Off by default;
    /// at most 1s, since the worker spins its core this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_busy_poll)]
    pub busy_poll: Option<Duration>,

    /// UDP receive coalescing: a socket that a drain found several datagrams waiting on (8 to
    /// 31; a batch is 32) waits this long before it is watched again, so its next drain relays
    /// a fuller batch: fewer wake-ups, system calls and sends per datagram under load, for up
    /// to this much added latency on that socket while the load lasts. Light load and
    /// request/response traffic never trigger it, and the worker's other sockets and
    /// connections are served meanwhile. 0 turns it off; at most 10ms, since each pause holds
    /// that socket's datagrams back this long; unused with --busy-poll.
    #[arg(long, value_name = "DURATION", value_parser = parse_udp_coalesce,
          default_value = "50us")]
    pub udp_coalesce: Duration,

    /// Do not collect the data plane's histograms and counters (connect latency, connection
    /// duration, connect errors, close reasons, affinity hits); the per-service and
    /// per-backend counters stay.
    #[arg(long)]
    pub no_telemetry: bool,

    /// Log one JSON line per connection to PATH (appended; `-`: stdout), from the start.
    /// Without it the decision log is off, and writes to stdout once switched on with
    /// `POST /decision-log?enabled=true` on the admin API.
    #[arg(long, value_name = "PATH|-")]
    pub decision_log: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Frontend address of the demo (port 0: free ports for ringlb and the demo backends).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Requests in the burst (one new connection each).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub requests: u32,

    /// Requests in flight at once during the burst.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Exit after the burst instead of serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,

    #[command(flatten)]
    pub data_plane: DataPlaneArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
}

fn parse_proxy_protocol(s: &str) -> Result<config::ProxyProtocol, String> {
    config::ProxyProtocol::parse(s).ok_or_else(|| format!("{s:?}: use v1 or v2"))
}

fn parse_range(s: &str) -> Result<ipnet::IpNet, String> {
    config::parse_range(s)
        .ok_or_else(|| format!("{s:?} is not an address range (e.g. 10.0.0.0/8 or 192.0.2.7)"))
}

fn parse_scheduler(s: &str) -> Result<SchedulerKind, String> {
    s.parse()
        .map_err(|e: balancers::UnknownScheduler| e.to_string())
}

fn parse_nodeport_address(s: &str) -> Result<NodePortAddress, String> {
    if s == "primary" {
        return Ok(NodePortAddress::Primary);
    }
    s.parse()
        .map(NodePortAddress::Cidr)
        .map_err(|e| format!("expected primary or a CIDR such as 10.0.0.0/8 or fd00::/64: {e}"))
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    match u32::from_str_radix(digits, 16) {
        Ok(0) => Err("the mark must have at least one bit set".to_owned()),
        Ok(mark) => Ok(mark),
        Err(e) => Err(format!("expected a hexadecimal mark such as 0x200000: {e}")),
    }
}

fn parse_admin(s: &str) -> Result<config::Admin, String> {
    config::Admin::parse(s)
        .ok_or_else(|| "expected off or an IP:port address (IPv6 as [::1]:9901)".to_owned())
}

/// The longest `--busy-poll`: the worker spins its core that long after each datagram, so
/// beyond a second it is a core lost, not a latency saved.
const MAX_BUSY_POLL: Duration = Duration::from_secs(1);

/// The longest `--udp-coalesce`: a loaded socket's datagrams wait that long on each pause,
/// so beyond a few milliseconds it only adds latency (the default is 50us).
const MAX_UDP_COALESCE: Duration = Duration::from_millis(10);

fn parse_busy_poll(s: &str) -> Result<Duration, config::DurationError> {
    config::parse_duration_at_most(s, MAX_BUSY_POLL, "the longest --busy-poll spins a core")
}

fn parse_udp_coalesce(s: &str) -> Result<Duration, config::DurationError> {
    config::parse_duration_at_most(
        s,
        MAX_UDP_COALESCE,
        "the longest --udp-coalesce holds datagrams back",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let quick = [
            "ringlb",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--to",
            "127.0.0.1:1",
        ];
        match Cli::try_parse_from(quick.iter().chain(extra))?.command {
            Command::Run(args) => Ok(args),
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn duration_flags_take_their_limit_and_refuse_beyond_it() {
        let max = "100y";
        let args = run(&[
            "--connect-timeout",
            max,
            "--idle-timeout",
            max,
            "--drain-timeout",
            max,
            "--backend-drain-timeout",
            max,
            "--busy-poll",
            "1s",
            "--udp-coalesce",
            "10ms",
        ])
        .unwrap();
        assert_eq!(args.connect_timeout, config::MAX_DURATION);
        assert_eq!(args.idle_timeout, Some(config::MAX_DURATION));
        assert_eq!(args.data_plane.drain_timeout, config::MAX_DURATION);
        assert_eq!(
            args.reload.backend_drain_timeout,
            Some(config::MAX_DURATION)
        );
        assert_eq!(args.data_plane.busy_poll, Some(MAX_BUSY_POLL));
        assert_eq!(args.data_plane.udp_coalesce, MAX_UDP_COALESCE);
        let over = "100y 1s";
        for bad in [
            ["--connect-timeout", over],
            ["--idle-timeout", over],
            ["--drain-timeout", over],
            ["--backend-drain-timeout", over],
            ["--busy-poll", "1001ms"],
            ["--udp-coalesce", "10001us"],
            ["--connect-timeout", "0"],
            ["--idle-timeout", "0s"],
        ] {
            assert!(run(&bad).is_err(), "{bad:?}");
        }
        // Zero keeps its meaning where it had one: no wait, or off.
        let zero = run(&[
            "--drain-timeout",
            "0",
            "--backend-drain-timeout",
            "0",
            "--busy-poll",
            "0",
            "--udp-coalesce",
            "0",
        ])
        .unwrap();
        assert!(zero.data_plane.udp_coalesce.is_zero());
    }
}
