//! Checked configuration types: everything here has been validated.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;
use std::time::Duration;

use balancers::{BackendSpec, SchedulerConfig};

use crate::names::Target;

/// A whole validated configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    /// Services, in file order; names are unique.
    pub services: Vec<Service>,
}

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP: each accepted connection is relayed to one backend.
    #[default]
    Tcp,
    /// UDP: each client flow is relayed to one backend.
    Udp,
}

impl Protocol {
    /// Lower-case name as written in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One load-balanced service: frontends, backends and how to pick between them.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Unique name (used in logs and metrics).
    pub name: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Local addresses to listen on (at least one).
    pub listen: Vec<SocketAddr>,
    /// Backends in configuration order, IP addresses only: what the table serves. With
    /// DNS-named backends this is [`Service::targets`] expanded with the latest answers (see
    /// [`Service::expand`]), and may be empty while no name has resolved.
    pub backends: Vec<Backend>,
    /// The backend list as written when at least one entry is a DNS name; empty when every
    /// backend is an IP address (then `backends` is the list as written).
    pub targets: Vec<Target>,
    /// Scheduler and its flags.
    pub scheduler: SchedulerConfig,
    /// Deadline for one connect attempt to a backend.
    pub connect_timeout: Duration,
    /// A connection with no bytes moving in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Backends tried per client connection before the client is reset.
    pub max_connect_attempts: NonZeroU32,
    /// ClientIP session affinity: a client IP keeps its backend for this long after its last
    /// new connection (`None`: no affinity).
    pub session_affinity: Option<Duration>,
    /// UDP: most flows the service tracks at once, node-wide; a datagram that would open one
    /// more is dropped and counted. Ignored for TCP.
    pub max_flows: u32,
    /// Connect to backends from the client's own address (`IP_TRANSPARENT`; for UDP its port
    /// too), so they see who is calling, as kube-proxy's DNAT lets them. Only node mode sets it
    /// (`--preserve-client-ip`, for `externalTrafficPolicy: Local`), with the policy routing
    /// that brings the backends' replies back to ringlb; replies must pass this host.
    pub preserve_client_ip: bool,
    /// Connect to backends from the client's own address, as with `preserve_client_ip`,
    /// for clients in these ranges only: node mode's pods (`--cluster-cidr` with
    /// `--preserve-client-ip`), whose replies come back through this node from any
    /// endpoint, as kube-proxy leaves their address untranslated. Empty: none.
    pub transparent_from: Vec<ipnet::IpNet>,
    /// TCP: send each backend a PROXY protocol header (HAProxy's) naming the client and the
    /// address it dialled, before any byte of the client's (`None`: no header).
    pub proxy_protocol: Option<ProxyProtocol>,
    /// TCP: the frontends sit behind a load balancer that sends a PROXY protocol header (v1 or
    /// v2): a connection from these ranges must start with one, and the client it names is
    /// the client from then on; a connection from elsewhere is reset. Empty: no header is read.
    pub accept_proxy_protocol: Vec<ipnet::IpNet>,
    /// Active health checks of the backends (`None`: every backend is taken as up).
    pub health: Option<HealthCheck>,
    /// TCP: passive outlier detection (`None`: off).
    pub outliers: Option<Outliers>,
    /// A backend that comes back (marked up, readmitted, added) ramps its weight up over
    /// this long (`wrr`, `wlc`, `sed`, `nq`; see `balancers::SlowStart`). `None`: full
    /// weight at once.
    pub slow_start: Option<Duration>,
}

/// Passive outlier detection, as Envoy's consecutive-failure detection at L4: a backend with
/// `after` failures in a row (connects that failed, connections reset before their first
/// byte back) is ejected for `time` × its ejections so far (at most [`Outliers::MAX_TIME`]),
/// and never more than `max_percent` of a service's backends at once (but always one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outliers {
    pub after: u32,
    pub time: Duration,
    pub max_percent: u32,
}

impl Outliers {
    /// Defaults: Envoy's 30 s base ejection time and 10 %.
    pub const TIME: Duration = Duration::from_secs(30);
    pub const MAX_PERCENT: u32 = 10;
    /// The longest one ejection lasts (Envoy's `max_ejection_time` default).
    pub const MAX_TIME: Duration = Duration::from_secs(300);

    /// Ejection after `after` failures in a row, with the defaults.
    pub fn new(after: u32) -> Outliers {
        Outliers {
            after,
            time: Self::TIME,
            max_percent: Self::MAX_PERCENT,
        }
    }

    /// How long the `n`th ejection (from 1) of a backend lasts.
    pub fn ejection(&self, n: u32) -> Duration {
        self.time
            .saturating_mul(n.max(1))
            .min(Self::MAX_TIME.max(self.time))
    }

    /// How many of `backends` may be ejected at once.
    pub fn most_ejected(&self, backends: usize) -> usize {
        (backends * self.max_percent as usize / 100).max(1)
    }
}

/// Active health checks of a service's backends, as HAProxy's `check` with `inter`,
/// `downinter`, `rise` and `fall`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// What one check does.
    pub probe: Probe,
    /// Time between two checks of a backend that is up (each spread by up to ±10 %).
    pub interval: Duration,
    /// Time between two checks of a backend that is down.
    pub down_interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// `tcp`: bytes sent once connected (may be empty).
    pub send: Vec<u8>,
    /// `tcp`: bytes the answer must contain within the timeout (empty: the connect is enough).
    pub expect: Vec<u8>,
    /// `http:PATH`: the statuses that pass.
    pub status: std::ops::RangeInclusive<u16>,
    /// `on_marked_down: shutdown-sessions` (HAProxy's): a backend marked down has its open
    /// connections reset and its UDP flows ended at once; `false` (`keep`, the default)
    /// leaves them to end on their own.
    pub shutdown_sessions: bool,
}

/// One health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect that succeeds within the timeout.
    Tcp,
    /// `GET path` over HTTP/1.1 answered within the timeout with a status in
    /// [`HealthCheck::status`] (2xx and 3xx by default).
    Http { path: String },
}

impl Probe {
    /// `tcp`, or `http:PATH` with `PATH` starting with `/`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Probe> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("tcp") {
            return Some(Probe::Tcp);
        }
        let path = s.strip_prefix("http:")?;
        let printable = path.bytes().all(|b| b.is_ascii_graphic());
        (path.starts_with('/') && printable).then(|| Probe::Http {
            path: path.to_owned(),
        })
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Tcp => f.write_str("tcp"),
            Probe::Http { path } => write!(f, "http:{path}"),
        }
    }
}

impl HealthCheck {
    /// Defaults: HAProxy's 2 s interval, rise 2 and fall 3; a 1 s timeout.
    pub const INTERVAL: Duration = Duration::from_secs(2);
    pub const TIMEOUT: Duration = Duration::from_secs(1);
    pub const RISE: u32 = 2;
    pub const FALL: u32 = 3;
    /// HTTP statuses that pass by default: 2xx and 3xx, as HAProxy's `httpchk`.
    pub const STATUS: std::ops::RangeInclusive<u16> = 200..=399;

    /// `probe` with the defaults.
    pub fn new(probe: Probe) -> HealthCheck {
        HealthCheck {
            probe,
            interval: Self::INTERVAL,
            down_interval: Self::INTERVAL,
            timeout: Self::TIMEOUT,
            rise: Self::RISE,
            fall: Self::FALL,
            send: Vec::new(),
            expect: Vec::new(),
            status: Self::STATUS,
            shutdown_sessions: false,
        }
    }
}

/// A version of HAProxy's PROXY protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl ProxyProtocol {
    /// `v1` or `v2`, as written in configuration; `None` for anything else.
    pub fn parse(s: &str) -> Option<ProxyProtocol> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v1" | "1" => Some(ProxyProtocol::V1),
            "v2" | "2" => Some(ProxyProtocol::V2),
            _ => None,
        }
    }

    /// `v1` or `v2`.
    pub fn name(self) -> &'static str {
        match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

/// One backend of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative weight; 0 takes no new connections (quiesced).
    pub weight: u32,
    /// Connection limit (IPVS upper threshold): at this many connections the backend takes no
    /// new ones until it drops below three quarters of it. `None`: unlimited.
    pub max_connections: Option<u32>,
}

impl Backend {
    /// A backend with `weight` and no connection limit.
    pub fn new(address: SocketAddr, weight: u32) -> Self {
        Self {
            address,
            weight,
            max_connections: None,
        }
    }

    /// What the scheduler sees of this backend.
    pub fn spec(&self) -> BackendSpec {
        BackendSpec::new(self.weight)
            .with_addr(self.address)
            .with_max_connections(self.max_connections)
    }
}

/// Defaults applied to fields a service leaves out. They follow common L4 proxy practice:
/// a 5 s connect deadline (HAProxy's and Envoy's usual `connect` timeout), a one-hour idle
/// timeout (Envoy's TCP proxy default, long enough for database and SSH sessions), and three
/// connect attempts (the first pick plus two other backends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceDefaults;

impl ServiceDefaults {
    /// Default connect deadline per attempt.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default idle timeout of a TCP connection.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    /// Default idle timeout of a UDP flow: 60 s, Envoy's `udp_proxy` default. Longer than the
    /// 30 s the kernel's conntrack gives an unanswered UDP flow and than common keepalive
    /// intervals (NAT keepalives every 15-30 s, QUIC's default idle ping), so live sessions keep
    /// their backend, and short enough that a flood of one-off clients (DNS) is reclaimed soon.
    pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default bound on one UDP service's flows. Each flow holds a socket (a descriptor and
    /// about 1 KiB of kernel memory), so the bound keeps spoofed or one-off sources from
    /// exhausting descriptors; 65,536 flows is far above what one service of a node serves.
    pub const MAX_FLOWS: u32 = 65_536;
    /// Default connect attempts per client connection.
    pub const MAX_CONNECT_ATTEMPTS: NonZeroU32 = NonZeroU32::new(3).unwrap();
    /// Default backend weight.
    pub const WEIGHT: u32 = 1;
    /// Default ClientIP affinity timeout: 3 hours, as Kubernetes.
    pub const AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);
    /// Longest ClientIP affinity timeout (one day, as Kubernetes validates).
    pub const MAX_AFFINITY_TIMEOUT: Duration = Duration::from_secs(86_400);
}

impl Service {
    /// The default idle timeout for `protocol`.
    pub fn default_idle_timeout(protocol: Protocol) -> Duration {
        match protocol {
            Protocol::Tcp => ServiceDefaults::IDLE_TIMEOUT,
            Protocol::Udp => ServiceDefaults::UDP_IDLE_TIMEOUT,
        }
    }

    /// A service with the defaults of [`ServiceDefaults`], as quick mode builds it from flags.
    /// Whether a connection (a UDP flow) of `client` goes to `backend` from the client's own
    /// address (`preserve_client_ip`, or `client` in `transparent_from`). Never to the
    /// client itself (a pod reaching its own Service): a packet from its own address would be
    /// dropped as a martian, so that one leaves from this node's, as kube-proxy's hairpin
    /// masquerades it.
    #[inline]
    pub fn from_client(&self, client: std::net::IpAddr, backend: std::net::IpAddr) -> bool {
        (self.preserve_client_ip || self.transparent_from.iter().any(|n| n.contains(&client)))
            && client != backend
    }

    pub fn with_defaults(
        name: impl Into<String>,
        protocol: Protocol,
        listen: Vec<SocketAddr>,
        backends: Vec<Backend>,
        scheduler: SchedulerConfig,
    ) -> Self {
        Self {
            name: name.into(),
            protocol,
            listen,
            backends,
            targets: Vec::new(),
            scheduler,
            connect_timeout: ServiceDefaults::CONNECT_TIMEOUT,
            idle_timeout: Self::default_idle_timeout(protocol),
            max_connect_attempts: ServiceDefaults::MAX_CONNECT_ATTEMPTS,
            session_affinity: None,
            max_flows: ServiceDefaults::MAX_FLOWS,
            preserve_client_ip: false,
            transparent_from: Vec::new(),
            proxy_protocol: None,
            accept_proxy_protocol: Vec::new(),
            health: None,
            outliers: None,
            slow_start: None,
        }
    }
}

/// Where the admin HTTP API listens: the top-level `admin:` key of ringlb YAML, and
/// `ringlb run --admin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    /// No admin listener (`off`).
    Off,
    /// Listen on this address (port 0: a free port).
    Listen(SocketAddr),
}

impl Admin {
    /// Where the admin API listens when a config file does not say: loopback only, so nothing
    /// is exposed on other interfaces unless asked; 9901 is Envoy's customary admin port.
    pub const DEFAULT: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901));

    /// Parses `off` or an `IP:port` address (IPv6 as `[::1]:9901`); `None` for anything else.
    pub fn parse(s: &str) -> Option<Admin> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Some(Admin::Off);
        }
        s.parse().ok().map(Admin::Listen)
    }
}

#[cfg(test)]
mod admin_tests {
    use super::Admin;

    #[test]
    fn admin_is_off_or_an_address() {
        assert_eq!(Admin::parse("off"), Some(Admin::Off));
        assert_eq!(Admin::parse(" OFF "), Some(Admin::Off));
        assert_eq!(
            Admin::parse("127.0.0.1:0"),
            Some(Admin::Listen("127.0.0.1:0".parse().unwrap()))
        );
        assert_eq!(
            Admin::parse("[::1]:9901"),
            Some(Admin::Listen("[::1]:9901".parse().unwrap()))
        );
        for bad in ["", "on", "false", "localhost:9901", "9901", "127.0.0.1"] {
            assert_eq!(Admin::parse(bad), None, "{bad:?}");
        }
        assert!(Admin::DEFAULT.ip().is_loopback());
    }
}
