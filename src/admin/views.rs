//! `/config` and `/stats`: the live table as JSON, and its counters as JSON or an aligned text
//! table in the spirit of `ipvsadm -Ln --stats`. `/udp/flows`: the live UDP flows, in the
//! form a successor process reads back (`--takeover`).

use std::fmt::Write as _;
use std::net::SocketAddr;

use balancers::BackendState;
use config::{ServiceEntry, Table};
use proxy_core::{Count, TelemetrySnapshot, UdpFlowInfo};
use serde::{Deserialize, Serialize};

/// `/config`: what the live table serves.
#[derive(Debug, Serialize)]
pub struct ConfigView<'a> {
    version: u64,
    services: Vec<ServiceConfig<'a>>,
}

#[derive(Debug, Serialize)]
struct ServiceConfig<'a> {
    name: &'a str,
    protocol: &'static str,
    /// The addresses actually listened on (port 0 resolved).
    frontends: &'a [SocketAddr],
    scheduler: &'static str,
    scheduler_flags: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mh_table_size: Option<u32>,
    session_affinity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_affinity_timeout: Option<String>,
    connect_timeout: String,
    idle_timeout: String,
    max_connect_attempts: u32,
    /// `v1` or `v2` towards backends.
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_protocol: Option<&'static str>,
    /// Where a PROXY protocol header is read from.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    accept_proxy_protocol: &'a [ipnet::IpNet],
    /// The health checks, as `tcp` or `http:PATH` with their settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check: Option<HealthView>,
    /// How long a backend that comes back takes to ramp to its full weight.
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_start: Option<String>,
    endpoints: Vec<EndpointConfig>,
}

#[derive(Debug, Serialize)]
struct HealthView {
    check: String,
    interval: String,
    down_interval: String,
    timeout: String,
    rise: u32,
    fall: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    send: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expect: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    /// `keep` or `shutdown-sessions`.
    on_marked_down: &'static str,
}

#[derive(Debug, Serialize)]
struct EndpointConfig {
    address: SocketAddr,
    weight: u32,
    /// `null`: no limit.
    max_connections: Option<u32>,
    state: &'static str,
    /// While it ramps up after coming back: how far its ramp has gone, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_start_percent: Option<u64>,
}

impl<'a> ConfigView<'a> {
    /// The view of `table`.
    pub fn new(table: &'a Table) -> Self {
        ConfigView {
            version: table.version(),
            services: table.services().iter().map(|e| service_config(e)).collect(),
        }
    }
}

fn service_config(entry: &ServiceEntry) -> ServiceConfig<'_> {
    let svc = &entry.service;
    let sc = &svc.scheduler;
    let scheduler_flags = sc.flag_names().collect();
    ServiceConfig {
        name: &svc.name,
        protocol: svc.protocol.name(),
        frontends: &svc.listen,
        scheduler: sc.kind.name(),
        scheduler_flags,
        mh_table_size: (sc.kind == balancers::SchedulerKind::Mh).then_some(sc.mh_table_size),
        session_affinity: if svc.session_affinity.is_some() {
            "client_ip"
        } else {
            "none"
        },
        session_affinity_timeout: svc.session_affinity.map(duration),
        connect_timeout: duration(svc.connect_timeout),
        idle_timeout: duration(svc.idle_timeout),
        max_connect_attempts: svc.max_connect_attempts.get(),
        proxy_protocol: svc.proxy_protocol.map(config::ProxyProtocol::name),
        accept_proxy_protocol: &svc.accept_proxy_protocol,
        health_check: svc.health.as_ref().map(|h| HealthView {
            check: h.probe.to_string(),
            interval: duration(h.interval),
            down_interval: duration(h.down_interval),
            timeout: duration(h.timeout),
            rise: h.rise,
            fall: h.fall,
            send: (!h.send.is_empty()).then(|| String::from_utf8_lossy(&h.send).into_owned()),
            expect: (!h.expect.is_empty()).then(|| String::from_utf8_lossy(&h.expect).into_owned()),
            status: matches!(h.probe, config::Probe::Http { .. })
                .then(|| format!("{}-{}", h.status.start(), h.status.end())),
            on_marked_down: if h.shutdown_sessions {
                "shutdown-sessions"
            } else {
                "keep"
            },
        }),
        slow_start: svc.slow_start.map(duration),
        endpoints: entry
            .backends
            .iter()
            .zip(&entry.states)
            .map(|(b, state)| EndpointConfig {
                address: b.address,
                weight: b.weight,
                max_connections: state.max_connections(),
                state: endpoint_state(b.weight, state),
                slow_start_percent: ramp_percent(svc, state),
            })
            .collect(),
    }
}

/// A duration as the config file writes it (`5s`, `1h`, `1m 30s`).
fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Whether an endpoint takes new connections: `active` (yes), `inactive` (weight 0: quiesced,
/// its open connections go on), `down` (its health checks failed), `ejected` (outlier
/// detection holds it out) or `overloaded` (at its `max_connections` until it drops below
/// three quarters of it).
fn endpoint_state(weight: u32, state: &BackendState) -> &'static str {
    if weight == 0 {
        "inactive"
    } else if state.is_down() {
        "down"
    } else if state.is_ejected() {
        "ejected"
    } else if state.is_overloaded() {
        "overloaded"
    } else {
        "active"
    }
}

/// The share of its weight, in percent, of a backend ramping up in its slow start; `None`
/// when it is not ramping.
fn ramp_percent(svc: &config::Service, state: &BackendState) -> Option<u64> {
    let slow = balancers::SlowStart::new(svc.slow_start?);
    if !balancers::SlowStart::applies_to(svc.scheduler.kind) {
        return None;
    }
    let step = slow.step(state.back_since(), balancers::outlier::monotonic_ms())?;
    Some(step * 100 / balancers::slow_start::STEPS)
}

/// `/stats`: the counters of every service and the connection counts of every backend.
#[derive(Debug, Serialize)]
pub struct StatsView<'a> {
    version: u64,
    services: Vec<ServiceStats<'a>>,
}

#[derive(Debug, Serialize)]
struct ServiceStats<'a> {
    name: &'a str,
    protocol: &'static str,
    scheduler: &'static str,
    frontends: &'a [SocketAddr],
    accepted: u64,
    active: u64,
    connect_attempts: u64,
    connect_retries: u64,
    connect_failed: u64,
    no_backend: u64,
    idle_timeouts: u64,
    bytes_to_backend: u64,
    bytes_to_client: u64,
    backends: Vec<BackendStats>,
}

#[derive(Debug, Serialize)]
struct BackendStats {
    address: SocketAddr,
    weight: u32,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_start_percent: Option<u64>,
    active: u32,
    inactive: u32,
}

impl<'a> StatsView<'a> {
    /// The counters of `table`, from the workers' counts summed in `counts` (`None`: nothing
    /// counted yet, all zero).
    pub fn new(table: &'a Table, counts: Option<&TelemetrySnapshot>) -> Self {
        StatsView {
            version: table.version(),
            services: table
                .services()
                .iter()
                .map(|e| service_stats(e, counts))
                .collect(),
        }
    }

    /// Two aligned tables, services then backends, one row each (easy to read, `grep` and
    /// `awk`). Column names follow `ipvsadm -Ln --stats` where they mean the same.
    pub fn to_text(&self) -> String {
        let mut services = vec![[
            "Service",
            "Prot",
            "Scheduler",
            "Conns",
            "ActiveConn",
            "Attempts",
            "Retries",
            "ConnectFailed",
            "NoBackend",
            "IdleTimeouts",
            "InBytes",
            "OutBytes",
            "LocalAddress:Port",
        ]
        .map(String::from)
        .to_vec()];
        let mut backends = vec![[
            "Service",
            "RemoteAddress:Port",
            "Weight",
            "State",
            "ActiveConn",
            "InActConn",
        ]
        .map(String::from)
        .to_vec()];
        for s in &self.services {
            let frontends: Vec<String> = s.frontends.iter().map(ToString::to_string).collect();
            services.push(vec![
                s.name.to_owned(),
                s.protocol.to_ascii_uppercase(),
                s.scheduler.to_owned(),
                s.accepted.to_string(),
                s.active.to_string(),
                s.connect_attempts.to_string(),
                s.connect_retries.to_string(),
                s.connect_failed.to_string(),
                s.no_backend.to_string(),
                s.idle_timeouts.to_string(),
                s.bytes_to_backend.to_string(),
                s.bytes_to_client.to_string(),
                frontends.join(","),
            ]);
            for b in &s.backends {
                backends.push(vec![
                    s.name.to_owned(),
                    b.address.to_string(),
                    b.weight.to_string(),
                    b.state.to_owned(),
                    b.active.to_string(),
                    b.inactive.to_string(),
                ]);
            }
        }
        let mut out = format!("Table version {}\n\n", self.version);
        out.push_str(&aligned(&services));
        out.push('\n');
        out.push_str(&aligned(&backends));
        out
    }
}

fn service_stats<'a>(
    entry: &'a ServiceEntry,
    counts: Option<&TelemetrySnapshot>,
) -> ServiceStats<'a> {
    let svc = &entry.service;
    let counts = counts.map(|snap| snap.service(entry));
    let c = |count| counts.map_or(0, |s| s.count(count));
    ServiceStats {
        name: &svc.name,
        protocol: svc.protocol.name(),
        scheduler: svc.scheduler.kind.name(),
        frontends: &svc.listen,
        accepted: c(Count::Accepted),
        active: c(Count::Active),
        connect_attempts: c(Count::ConnectAttempts),
        connect_retries: c(Count::ConnectRetries),
        connect_failed: c(Count::ConnectFailed),
        no_backend: c(Count::NoBackend),
        idle_timeouts: c(Count::IdleTimeouts),
        bytes_to_backend: c(Count::BytesToBackend),
        bytes_to_client: c(Count::BytesToClient),
        backends: entry
            .backends
            .iter()
            .zip(&entry.states)
            .map(|(b, state)| BackendStats {
                address: b.address,
                weight: b.weight,
                state: endpoint_state(b.weight, state),
                slow_start_percent: ramp_percent(&entry.service, state),
                active: state.active(),
                inactive: state.inactive(),
            })
            .collect(),
    }
}

/// Rows as left-aligned columns two spaces apart, without trailing blanks.
fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_pads_every_column_to_its_widest_cell() {
        let rows = vec![
            vec!["a".to_owned(), "bb".to_owned(), "c".to_owned()],
            vec!["dddd".to_owned(), "e".to_owned(), "f".to_owned()],
        ];
        assert_eq!(aligned(&rows), "a     bb  c\ndddd  e   f\n");
    }
}

/// `/udp/flows`: every worker's live UDP flows, and whether the process is draining (then its
/// frontends are closed and the list is final).
#[derive(Debug, Serialize, Deserialize)]
pub struct UdpFlowsView {
    pub draining: bool,
    pub flows: Vec<UdpFlowView>,
}

/// One UDP flow (durations in milliseconds).
#[derive(Debug, Serialize, Deserialize)]
pub struct UdpFlowView {
    pub service: String,
    pub frontend: SocketAddr,
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub backend: SocketAddr,
    pub idle_ms: u64,
    pub idle_timeout_ms: u64,
}

impl UdpFlowsView {
    /// The view of `flows`, sorted by service, frontend and client.
    pub fn new(draining: bool, flows: &[UdpFlowInfo]) -> Self {
        let mut flows: Vec<UdpFlowView> = flows
            .iter()
            .map(|f| UdpFlowView {
                service: f.service.clone(),
                frontend: f.frontend,
                client: f.client,
                local: f.local,
                backend: f.backend,
                idle_ms: millis(f.idle_for),
                idle_timeout_ms: millis(f.idle_timeout),
            })
            .collect();
        flows.sort_by(|a, b| {
            (&a.service, a.frontend, a.client, a.local)
                .cmp(&(&b.service, b.frontend, b.client, b.local))
        });
        UdpFlowsView { draining, flows }
    }

    /// The flows as the data plane takes them back.
    pub fn into_infos(self) -> Vec<UdpFlowInfo> {
        self.flows
            .into_iter()
            .map(|f| UdpFlowInfo {
                service: f.service,
                frontend: f.frontend,
                client: f.client,
                local: f.local,
                backend: f.backend,
                idle_for: std::time::Duration::from_millis(f.idle_ms),
                idle_timeout: std::time::Duration::from_millis(f.idle_timeout_ms),
            })
            .collect()
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
