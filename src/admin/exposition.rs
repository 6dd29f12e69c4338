//! `/metrics`: the Prometheus text exposition, assembled at scrape time.
//!
//! Nothing here runs on the data plane. The counters every worker keeps for itself are summed at
//! scrape time ([`TelemetrySnapshot`]), and the few node-wide numbers in the [`Table`] (the UDP
//! flow gauge, per-backend connection counts) are read then too, so exporting them costs the
//! hot path nothing. Every scrape fills a fresh
//! [`PrometheusRecorder`] (the exporter's own HTTP listener is never built) from a list of
//! [`Collect`] sources and renders it: a service or backend that left the table leaves the
//! exposition with it, so label sets are exactly the configured services and backends.
//!
//! Adding a source (for example the data plane's per-worker histograms) is one more
//! [`Collect`] passed to [`render`].
//!
//! Histograms are not recorded sample by sample here: the data plane hands over finished
//! bucket counts, which the exporter's recorder cannot take. [`Scrape::histogram`] writes them
//! in the same text format after the exporter's output, each family in one block.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use config::{Protocol, ServiceEntry, Table};
use metrics::{Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::formatting::{
    sanitize_label_value, write_help_line, write_type_line,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use proxy_core::{Count, TelemetrySnapshot};

use super::Telemetry;

/// The kind of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; the name ends in `_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations in cumulative buckets (`_bucket`, `_sum`, `_count` series).
    Histogram,
}

/// One metric family: its name, kind and `# HELP` text.
#[derive(Debug)]
pub struct Family {
    /// The full name (`ringlb_` prefix, base units, `_total` for counters).
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// One line for `# HELP`.
    pub help: &'static str,
}

impl Family {
    pub(super) const fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: Kind::Counter,
            help,
        }
    }

    pub(super) const fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: Kind::Gauge,
            help,
        }
    }

    pub(super) const fn histogram(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: Kind::Histogram,
            help,
        }
    }
}

/// A source of series, read on the control-plane thread at every scrape.
pub trait Collect {
    /// Adds this source's series for the live `table` to `out`.
    fn collect(&self, table: &Table, out: &mut Scrape);
}

/// One scrape being assembled.
#[derive(Debug)]
pub struct Scrape {
    recorder: PrometheusRecorder,
    described: HashSet<&'static str>,
    /// Histogram families in the order first seen, each with its sample lines.
    histograms: Vec<(&'static Family, String)>,
}

/// Where the series of a scrape say they come from (the exporter ignores it).
const METADATA: Metadata<'static> = Metadata::new("ringlb", Level::INFO, None);

impl Scrape {
    fn new() -> Scrape {
        Scrape {
            recorder: PrometheusBuilder::new().build_recorder(),
            described: HashSet::new(),
            histograms: Vec::new(),
        }
    }

    /// Sets the counter `family{labels}` to `value` (read from a monotonic source).
    pub fn counter(
        &mut self,
        family: &'static Family,
        labels: &[(&'static str, &str)],
        value: u64,
    ) {
        debug_assert!(
            family.kind == Kind::Counter && family.name.ends_with("_total"),
            "{} is not a counter family",
            family.name
        );
        let key = self.key(family, labels);
        self.recorder
            .register_counter(&key, &METADATA)
            .absolute(value);
    }

    /// Sets the gauge `family{labels}` to `value`.
    pub fn gauge(&mut self, family: &'static Family, labels: &[(&'static str, &str)], value: f64) {
        debug_assert!(
            family.kind == Kind::Gauge,
            "{} is not a gauge family",
            family.name
        );
        let key = self.key(family, labels);
        self.recorder.register_gauge(&key, &METADATA).set(value);
    }

    /// Adds the histogram `family{labels}`: `buckets` are `(le, cumulative count)` pairs,
    /// ascending, the last one `+Inf` with `count`; `sum` is the sum of the observations.
    pub fn histogram(
        &mut self,
        family: &'static Family,
        labels: &[(&'static str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        debug_assert!(
            family.kind == Kind::Histogram,
            "{} is not a histogram family",
            family.name
        );
        debug_assert!(
            buckets.last() == Some(&(f64::INFINITY, count))
                && buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{}: buckets must ascend to +Inf with the count",
            family.name
        );
        let at = match self
            .histograms
            .iter()
            .position(|(f, _)| f.name == family.name)
        {
            Some(at) => at,
            None => {
                self.histograms.push((family, String::new()));
                self.histograms.len() - 1
            }
        };
        let out = &mut self.histograms[at].1;
        let mut prefix = String::new();
        for (k, v) in labels {
            let _ = write!(prefix, "{k}=\"{}\",", sanitize_label_value(v));
        }
        let name = family.name;
        for &(le, n) in buckets {
            let le = if le == f64::INFINITY {
                "+Inf".to_owned()
            } else {
                le.to_string()
            };
            let _ = writeln!(out, "{name}_bucket{{{prefix}le=\"{le}\"}} {n}");
        }
        let labels = prefix.trim_end_matches(',');
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }

    fn key(&mut self, family: &'static Family, labels: &[(&'static str, &str)]) -> Key {
        if self.described.insert(family.name) {
            let name = KeyName::from(family.name);
            let help = SharedString::const_str(family.help);
            match family.kind {
                Kind::Counter => self.recorder.describe_counter(name, None, help),
                Kind::Gauge => self.recorder.describe_gauge(name, None, help),
                Kind::Histogram => unreachable!("histograms are written by Scrape::histogram"),
            }
        }
        let labels: Vec<Label> = labels
            .iter()
            .map(|&(k, v)| Label::new(k, v.to_owned()))
            .collect();
        Key::from_parts(family.name, labels)
    }

    fn render(&self) -> String {
        let mut out = self.recorder.handle().render();
        for (family, lines) in &self.histograms {
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push('\n');
            }
            write_help_line(&mut out, family.name, None, None, family.help);
            write_type_line(&mut out, family.name, None, None, "histogram");
            out.push_str(lines);
        }
        out
    }
}

/// The exposition of `sources` for the live `table`.
pub fn render(table: &Table, sources: &[&dyn Collect]) -> String {
    let mut scrape = Scrape::new();
    for source in sources {
        source.collect(table, &mut scrape);
    }
    scrape.render()
}

// Control plane.
const BUILD_INFO: Family = Family::gauge(
    "ringlb_build_info",
    "Always 1; the version label is the running ringlb version.",
);
const TABLE_VERSION: Family = Family::gauge(
    "ringlb_table_version",
    "Version of the live table: 1 at start, +1 at every swap (reload, DNS change).",
);
const TABLE_SWAP: Family = Family::gauge(
    "ringlb_table_last_swap_timestamp_seconds",
    "Unix time at which the live table was published.",
);
const RELOADS: Family = Family::counter(
    "ringlb_config_reloads_total",
    "Config reloads by result: success (a new table is live) or failure (the last good config keeps serving).",
);

// Per service.
const SERVICE_INFO: Family = Family::gauge(
    "ringlb_service_info",
    "Always 1 per configured service; labels give its protocol and scheduler.",
);
const ACCEPTED: Family = Family::counter(
    "ringlb_connections_accepted_total",
    "Client connections accepted.",
);
const ACTIVE: Family = Family::gauge("ringlb_connections_active", "Client connections open now.");
const FAILED: Family = Family::counter(
    "ringlb_connections_failed_total",
    "Client connections reset without reaching a backend, by reason: connect_failed (every attempt failed), no_backend (none eligible) descriptors (reset at accept: the data plane's share of the open-file limit was used up), proxy_header (no valid PROXY protocol header from a front load balancer) or proxy_untrusted (a PROXY protocol frontend reached from outside accept_proxy_protocol).",
);
const ATTEMPTS: Family = Family::counter(
    "ringlb_connect_attempts_total",
    "Connect attempts to backends, first tries and retries.",
);
const RETRIES: Family = Family::counter(
    "ringlb_connect_retries_total",
    "Connect attempts made after a failed one.",
);
const IDLE_TIMEOUTS: Family = Family::counter(
    "ringlb_idle_timeouts_total",
    "Connections closed by the idle timeout.",
);
const BYTES: Family = Family::counter(
    "ringlb_relayed_bytes_total",
    "Bytes relayed, by direction: client_to_backend or backend_to_client.",
);

// Per UDP service.
const UDP_FLOWS: Family = Family::gauge(
    "ringlb_udp_flows_active",
    "UDP flows open now, node-wide (bounded by the service's max_flows).",
);
const UDP_FLOWS_OPENED: Family =
    Family::counter("ringlb_udp_flows_opened_total", "UDP flows opened.");
const UDP_FLOWS_REFUSED: Family = Family::counter(
    "ringlb_udp_flows_refused_total",
    "UDP datagrams dropped because they would have opened a flow, by reason: max_flows (the service's bound) or descriptors (no descriptor left for the flow's upstream socket).",
);
const UDP_FLOWS_REBALANCED: Family = Family::counter(
    "ringlb_udp_flows_rebalanced_total",
    "UDP flows ended because their backend stopped being usable (removed, weight 0) or refused them (ICMP port unreachable).",
);
const UDP_DATAGRAMS: Family = Family::counter(
    "ringlb_udp_datagrams_total",
    "UDP datagrams relayed, by direction: client_to_backend or backend_to_client.",
);
const UDP_DATAGRAMS_DROPPED: Family = Family::counter(
    "ringlb_udp_datagrams_dropped_total",
    "UDP datagrams dropped: no eligible backend, a full socket buffer, or a send error.",
);

// Per backend.
const BACKEND_ACTIVE: Family = Family::gauge(
    "ringlb_backend_active_connections",
    "Connections to the backend counted active (established), as IPVS ActiveConn.",
);
const BACKEND_INACTIVE: Family = Family::gauge(
    "ringlb_backend_inactive_connections",
    "Connections to the backend counted inactive (connecting or half-closed), as IPVS InActConn.",
);
const BACKEND_WEIGHT: Family = Family::gauge(
    "ringlb_backend_weight",
    "Configured weight of the backend; 0 takes no new connections.",
);
const BACKEND_UP: Family = Family::gauge(
    "ringlb_backend_up",
    "0 while the service's health checks hold the backend down (it takes no new connections), else 1.",
);
const BACKEND_EJECTIONS: Family = Family::counter(
    "ringlb_backend_ejections_total",
    "Times outlier detection ejected the backend.",
);
const BACKEND_DOWNS: Family = Family::counter(
    "ringlb_backend_marked_down_total",
    "Times the service's health checks marked the backend down.",
);
const BACKEND_EJECTED: Family = Family::gauge(
    "ringlb_backend_ejected",
    "1 while outlier detection holds the backend out (it takes no new connections), else 0.",
);
const BACKEND_OVERLOADED: Family = Family::gauge(
    "ringlb_backend_overloaded",
    "1 while the backend is over its max_connections and takes no new connections, else 0.",
);

/// The series of the table: per service, from the workers' counts summed in the snapshot
/// (`None`: nothing counted yet, all zero) and the node-wide flow gauge, and per backend, from
/// its node-wide connection counts.
#[derive(Clone, Copy, Debug)]
pub struct TableSeries<'a>(pub Option<&'a TelemetrySnapshot>);

impl Collect for TableSeries<'_> {
    fn collect(&self, table: &Table, out: &mut Scrape) {
        out.gauge(&TABLE_VERSION, &[], table.version() as f64);
        for entry in table.services() {
            let svc = &entry.service;
            let name = svc.name.as_str();
            let s = [("service", name)];
            let scheduler = svc.scheduler.kind.name();
            out.gauge(
                &SERVICE_INFO,
                &[
                    ("service", name),
                    ("protocol", svc.protocol.name()),
                    ("scheduler", scheduler),
                ],
                1.0,
            );
            let counts = self.0.map(|snap| snap.service(entry));
            let c = |count| counts.map_or(0, |s| s.count(count));
            out.counter(&ACCEPTED, &s, c(Count::Accepted));
            out.gauge(&ACTIVE, &s, c(Count::Active) as f64);
            for (reason, count) in [
                ("connect_failed", Count::ConnectFailed),
                ("no_backend", Count::NoBackend),
                ("descriptors", Count::NoDescriptors),
                ("proxy_header", Count::ProxyHeader),
                ("proxy_untrusted", Count::ProxyUntrusted),
            ] {
                out.counter(&FAILED, &[("service", name), ("reason", reason)], c(count));
            }
            out.counter(&ATTEMPTS, &s, c(Count::ConnectAttempts));
            out.counter(&RETRIES, &s, c(Count::ConnectRetries));
            out.counter(&IDLE_TIMEOUTS, &s, c(Count::IdleTimeouts));
            for (direction, count) in [
                ("client_to_backend", Count::BytesToBackend),
                ("backend_to_client", Count::BytesToClient),
            ] {
                out.counter(
                    &BYTES,
                    &[("service", name), ("direction", direction)],
                    c(count),
                );
            }
            if svc.protocol == Protocol::Udp {
                udp_series(name, entry.state.flows(), &c, out);
            }
            backend_series(name, entry, out);
        }
    }
}

/// The UDP series of service `name`: its node-wide flow gauge `flows`, and its counts `c`.
fn udp_series(name: &str, flows: u64, c: &impl Fn(Count) -> u64, out: &mut Scrape) {
    let s = [("service", name)];
    out.gauge(&UDP_FLOWS, &s, flows as f64);
    out.counter(&UDP_FLOWS_OPENED, &s, c(Count::FlowsOpened));
    for (reason, count) in [
        ("max_flows", Count::FlowsRefused),
        ("descriptors", Count::FlowsNoDescriptors),
    ] {
        out.counter(
            &UDP_FLOWS_REFUSED,
            &[("service", name), ("reason", reason)],
            c(count),
        );
    }
    out.counter(&UDP_FLOWS_REBALANCED, &s, c(Count::FlowsRebalanced));
    for (direction, count) in [
        ("client_to_backend", Count::DatagramsToBackend),
        ("backend_to_client", Count::DatagramsToClient),
    ] {
        out.counter(
            &UDP_DATAGRAMS,
            &[("service", name), ("direction", direction)],
            c(count),
        );
    }
    out.counter(&UDP_DATAGRAMS_DROPPED, &s, c(Count::DatagramsDropped));
}

/// The per-backend series of service `name`.
fn backend_series(name: &str, entry: &ServiceEntry, out: &mut Scrape) {
    for (backend, state) in entry.backends.iter().zip(&entry.states) {
        let address = backend.address.to_string();
        let b = [("service", name), ("backend", address.as_str())];
        out.gauge(&BACKEND_ACTIVE, &b, f64::from(state.active()));
        out.gauge(&BACKEND_INACTIVE, &b, f64::from(state.inactive()));
        out.gauge(&BACKEND_WEIGHT, &b, f64::from(backend.weight));
        out.gauge(
            &BACKEND_OVERLOADED,
            &b,
            f64::from(u8::from(state.is_overloaded())),
        );
        out.gauge(&BACKEND_UP, &b, f64::from(u8::from(!state.is_down())));
        out.gauge(
            &BACKEND_EJECTED,
            &b,
            f64::from(u8::from(state.is_ejected())),
        );
        out.counter(&BACKEND_EJECTIONS, &b, state.outlier().ejected_total());
        out.counter(&BACKEND_DOWNS, &b, state.outlier().down_total());
    }
}

impl Collect for Telemetry {
    fn collect(&self, _table: &Table, out: &mut Scrape) {
        out.gauge(&BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        out.gauge(&TABLE_SWAP, &[], self.last_swap_unix_seconds());
        out.counter(
            &RELOADS,
            &[("result", "success")],
            self.reloads_succeeded.load(Relaxed),
        );
        out.counter(
            &RELOADS,
            &[("result", "failure")],
            self.reloads_failed.load(Relaxed),
        );
    }
}

// The HTTP ports (admin, node health, healthCheckNodePort).
const HTTP_CONNECTIONS: Family = Family::counter(
    "ringlb_http_connections_total",
    "Connections to ringlb's HTTP ports, by outcome: accepted, shed (idle the longest, closed to make room at the port's cap) or refused (at the cap with every connection answering).",
);
const HTTP_ACCEPT_ERRORS: Family = Family::counter(
    "ringlb_http_accept_errors_total",
    "Failed accepts on ringlb's HTTP ports (out of descriptors or memory: retried with backoff).",
);

impl Collect for control::http::Telemetry {
    fn collect(&self, _table: &Table, out: &mut Scrape) {
        for (kind, counts) in self.counts() {
            let server = kind.label();
            for (outcome, n) in [
                ("accepted", counts.accepted),
                ("shed", counts.shed),
                ("refused", counts.refused),
            ] {
                out.counter(
                    &HTTP_CONNECTIONS,
                    &[("server", server), ("outcome", outcome)],
                    n,
                );
            }
            out.counter(
                &HTTP_ACCEPT_ERRORS,
                &[("server", server)],
                counts.accept_errors,
            );
        }
    }
}
