//! The data plane's own series: per-worker histograms and counters summed at scrape time
//! ([`proxy_core::TelemetrySnapshot`]), and the decision log's counters.

use config::{Protocol, Table};
use proxy_core::{
    AffinityOutcome, CloseReason, ConnectError, HistogramSnapshot, TelemetrySnapshot,
};

use super::exposition::{Collect, Family, Scrape};
use super::DataPlane;

const CONNECT_LATENCY: Family = Family::histogram(
    "ringlb_backend_connect_duration_seconds",
    "Time a successful connect to a backend took (failed attempts are in ringlb_connect_errors_total).",
);
const DURATION: Family = Family::histogram(
    "ringlb_connection_duration_seconds",
    "Life of client connections from accept to close, however they ended.",
);
const CONNECT_ERRORS: Family = Family::counter(
    "ringlb_connect_errors_total",
    "Failed connect attempts to backends, by reason: refused, timeout, unreachable or other.",
);
const CLOSED: Family = Family::counter(
    "ringlb_connections_closed_total",
    "Relayed connections that ended, by reason: eof (both sides closed), idle_timeout, drained (backend removed by a reload; both sides reset at --backend-drain-timeout), reset, or drain_timeout (still open at the end of a shutdown's --drain-timeout; both sides reset).",
);
const AFFINITY: Family = Family::counter(
    "ringlb_affinity_lookups_total",
    "ClientIP session affinity lookups for new connections, by result: hit (the pinned backend was used) or miss (the scheduler picked).",
);
const UDP_COALESCE_PAUSES: Family = Family::counter(
    "ringlb_udp_coalesce_pauses_total",
    "Pauses UDP receive coalescing took (--udp-coalesce): a socket found several datagrams waiting and waited for more before it was read again.",
);
const FD_BUDGET: Family = Family::gauge(
    "ringlb_descriptors_budget",
    "Descriptors the data plane may hold: the open-file limit less what the rest of the process holds less a reserve for the admin and health ports (a TCP connection holds 2, a UDP flow 1).",
);
const FD_USED: Family = Family::gauge(
    "ringlb_descriptors_in_use",
    "Descriptors held by open TCP connections and UDP flows.",
);
const FD_REFUSED: Family = Family::counter(
    "ringlb_descriptors_refused_total",
    "New TCP connections reset and new UDP flows refused because no descriptor was left, by protocol.",
);
const PANICS: Family = Family::counter(
    "ringlb_worker_panics_total",
    "Panics caught in data-plane tasks (a bug: each is logged with its cause); the worker goes on.",
);
const LOG_ENABLED: Family = Family::gauge(
    "ringlb_decision_log_enabled",
    "1 while the per-connection decision log is on, else 0.",
);
const LOG_LINES: Family = Family::counter(
    "ringlb_decision_log_lines_total",
    "Lines written to the decision log.",
);
const LOG_DROPPED: Family = Family::counter(
    "ringlb_decision_log_dropped_total",
    "Decision log records lost, by reason: queue_full (the writer fell behind) or write_error.",
);

/// How relayed connections end (the failures before a backend are in
/// `ringlb_connections_failed_total`).
const RELAY_ENDS: [CloseReason; 5] = [
    CloseReason::Eof,
    CloseReason::IdleTimeout,
    CloseReason::Drained,
    CloseReason::Reset,
    CloseReason::DrainTimeout,
];

fn histogram(
    out: &mut Scrape,
    family: &'static Family,
    labels: &[(&'static str, &str)],
    h: &HistogramSnapshot,
) {
    out.histogram(family, labels, &h.cumulative(), h.sum_seconds(), h.count());
}

/// The data plane's series of one scrape: `plane`'s, with its workers' counts summed in
/// `snapshot`.
pub struct DataPlaneSeries<'a> {
    pub plane: &'a DataPlane,
    pub snapshot: &'a TelemetrySnapshot,
}

impl Collect for DataPlaneSeries<'_> {
    fn collect(&self, table: &Table, out: &mut Scrape) {
        let plane = self.plane;
        let log = &plane.decisions;
        out.gauge(&LOG_ENABLED, &[], f64::from(u8::from(log.enabled())));
        out.counter(&LOG_LINES, &[], log.written());
        out.counter(&LOG_DROPPED, &[("reason", "queue_full")], log.dropped());
        out.counter(
            &LOG_DROPPED,
            &[("reason", "write_error")],
            log.write_errors(),
        );

        out.counter(
            &UDP_COALESCE_PAUSES,
            &[],
            plane.telemetry.udp_coalesce_pauses(),
        );
        let fds = &plane.fds;
        if fds.cap() != usize::MAX {
            out.gauge(&FD_BUDGET, &[], fds.cap() as f64);
        }
        out.gauge(&FD_USED, &[], fds.used() as f64);
        out.counter(&FD_REFUSED, &[("protocol", "tcp")], fds.refused_tcp());
        out.counter(&FD_REFUSED, &[("protocol", "udp")], fds.refused_udp());
        out.counter(&PANICS, &[], plane.panics.count());

        let snapshot = self.snapshot;
        if !snapshot.enabled() {
            return;
        }
        for entry in table.services() {
            let name = entry.service.name.as_str();
            let s = snapshot.service(entry);
            if entry.affinity.is_some() {
                for outcome in [AffinityOutcome::Hit, AffinityOutcome::Miss] {
                    out.counter(
                        &AFFINITY,
                        &[("service", name), ("result", outcome.name())],
                        s.affinity(outcome),
                    );
                }
            }
            // The connection histograms and reasons are TCP's; UDP flows count in the
            // ringlb_udp_* counters.
            if entry.service.protocol != Protocol::Tcp {
                continue;
            }
            let labels = [("service", name)];
            histogram(out, &CONNECT_LATENCY, &labels, &s.connect);
            histogram(out, &DURATION, &labels, &s.duration);
            for kind in ConnectError::ALL {
                out.counter(
                    &CONNECT_ERRORS,
                    &[("service", name), ("reason", kind.name())],
                    s.connect_errors(kind),
                );
            }
            for reason in RELAY_ENDS {
                out.counter(
                    &CLOSED,
                    &[("service", name), ("reason", reason.name())],
                    s.closed(reason),
                );
            }
        }
    }
}
