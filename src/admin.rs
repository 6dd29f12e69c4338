//! The admin HTTP API: `/healthz`, `/readyz`, `/config`, `/stats` and `/metrics`.
//!
//! It is served on the control runtime by the bounded server of [`control::http`] (its limits:
//! [`Limits::ADMIN`]). Every answer is computed from the live [`Table`], the control plane's own
//! [`Telemetry`], the [`Readiness`] problems and the data plane's per-worker telemetry when it
//! is asked for; nothing here touches a data-plane socket or adds work to the data plane, and
//! nothing blocks the control thread (`/udp/flows` bounds its wait for the workers). `GET` (and
//! `HEAD`) are served everywhere; the one `POST` switches the decision log.

mod dataplane;
mod exposition;
mod views;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use arc_swap::ArcSwap;
use config::Table;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, ORIGIN};
use hyper::{Method, Request, Response, StatusCode};
use proxy_core::TelemetrySnapshot;

use self::dataplane::DataPlaneSeries;
use self::exposition::TableSeries;
use self::views::{ConfigView, StatsView};
pub use self::views::{UdpFlowView, UdpFlowsView};
use crate::decisions::DecisionLogControl;
use control::http::{Body, HttpServer, Limits, ServerKind, Spec};
use control::Plane;
use control::Readiness;

/// Where the admin API is to listen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminBind {
    /// The address (port 0: a free one).
    pub addr: SocketAddr,
    /// Asked for with `--admin` or the `admin:` key (else the default address). Either way a
    /// taken address is a startup error; the message says how to pick another.
    pub explicit: bool,
}

/// Binds the admin listener before anything else starts, so that a taken port fails early (as
/// Envoy's admin listener does): a second ringlb on one host must choose its own `--admin`.
/// The listener comes from `plane`'s socket source (the master keeps it across restarts).
pub fn bind(plane: &Plane, bind: AdminBind) -> anyhow::Result<Option<std::net::TcpListener>> {
    match plane.http_listener(format!("admin {}", bind.addr), bind.addr, false) {
        Ok(listener) => {
            if !bind.addr.ip().is_loopback() {
                tracing::info!(addr = %bind.addr, "the admin API listens beyond loopback: /config shows every frontend and backend");
            }
            Ok(Some(listener))
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => anyhow::bail!(
            "cannot listen for the admin API on {}{}: address already in use (another ringlb?); choose another with --admin ADDR or `admin:`, or `off`",
            bind.addr,
            if bind.explicit { "" } else { " (the default)" }
        ),
        Err(e) => Err(e).with_context(|| format!("cannot listen for the admin API on {}", bind.addr)),
    }
}

/// Where the process is in its life, for `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Before the table is loaded and every listener bound.
    Starting = 0,
    /// Serving.
    Ready = 1,
    /// Stopped accepting; open connections finish.
    Draining = 2,
}

/// What the control plane counts itself: reloads and table swaps.
#[derive(Debug, Default)]
pub struct Telemetry {
    reloads_succeeded: AtomicU64,
    reloads_failed: AtomicU64,
    /// The table version whose publication time is `swapped_at_ms`.
    swapped_version: AtomicU64,
    /// Unix time in milliseconds.
    swapped_at_ms: AtomicU64,
}

impl Telemetry {
    /// Counts a reload that made a new table live.
    pub fn reload_succeeded(&self) {
        self.reloads_succeeded.fetch_add(1, Relaxed);
    }

    /// Counts a reload that changed nothing because it failed; returns the failures so far.
    pub fn reload_failed(&self) -> u64 {
        self.reloads_failed.fetch_add(1, Relaxed) + 1
    }

    /// Records now as the time the table `version` was published, unless that version was
    /// already seen. The control loop calls it after every event it handled, so each swap
    /// (reload, DNS change) is timed by the loop iteration that made it.
    pub fn table_published(&self, version: u64) {
        if self.swapped_version.swap(version, Relaxed) != version {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
            self.swapped_at_ms.store(ms, Relaxed);
        }
    }

    fn last_swap_unix_seconds(&self) -> f64 {
        self.swapped_at_ms.load(Relaxed) as f64 / 1000.0
    }
}

/// The running data plane's telemetry, as the admin API reads and switches it.
#[derive(Debug)]
pub struct DataPlane {
    /// Per-worker histograms and counters.
    pub telemetry: Arc<proxy_core::Telemetry>,
    /// The decision log's switch and counters.
    pub decisions: Arc<DecisionLogControl>,
    /// Lists the workers' live UDP flows.
    pub flows: proxy_core::FlowList,
    /// The data plane's share of the open-file limit.
    pub fds: Arc<proxy_core::FdBudget>,
    /// Panics the workers caught.
    pub panics: Arc<proxy_core::Panics>,
}

/// What the admin API reads: the live table, the phase, what keeps the process from being
/// ready and the control plane's counters.
#[derive(Debug)]
pub struct AdminState {
    table: Arc<ArcSwap<Table>>,
    phase: AtomicU8,
    /// Problems that make `/readyz` answer 503 although the process serves; anyone may report.
    pub readiness: Arc<Readiness>,
    /// Reloads and table swaps.
    pub telemetry: Telemetry,
    /// The HTTP ports' counters.
    http: Arc<control::http::Telemetry>,
    /// Set once the workers run.
    data_plane: OnceLock<DataPlane>,
}

impl AdminState {
    /// State for the data plane reading `table`, not ready yet, reading the readiness
    /// problems and HTTP counters of `plane`.
    pub fn new(table: Arc<ArcSwap<Table>>, plane: &Plane) -> AdminState {
        let telemetry = Telemetry::default();
        telemetry.table_published(table.load().version());
        AdminState {
            table,
            phase: AtomicU8::new(Phase::Starting as u8),
            readiness: Arc::clone(&plane.readiness),
            telemetry,
            http: Arc::clone(&plane.http),
            data_plane: OnceLock::new(),
        }
    }

    /// The data plane runs: its series join `/metrics` and `/decision-log` answers.
    pub fn attach(&self, data_plane: DataPlane) {
        let _ = self.data_plane.set(data_plane);
    }

    /// Every listener is bound and the workers accept: `/readyz` answers 200.
    pub fn set_ready(&self) {
        self.phase.store(Phase::Ready as u8, Relaxed);
    }

    /// Stopped accepting: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.phase.store(Phase::Draining as u8, Relaxed);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// The workers' counts summed now (`None` before the workers run: nothing counted yet).
    fn counts(&self) -> Option<TelemetrySnapshot> {
        self.data_plane.get().map(|dp| dp.telemetry.snapshot())
    }

    /// The `/metrics` exposition now. The workers' counts are summed once, so the table's
    /// series and the data plane's agree.
    pub fn metrics(&self) -> String {
        let table = self.table.load();
        let http = &*self.http;
        let counts = self.counts();
        let services = TableSeries(counts.as_ref());
        match (self.data_plane.get(), &counts) {
            (Some(plane), Some(snapshot)) => {
                let dp = DataPlaneSeries { plane, snapshot };
                exposition::render(&table, &[&services, &self.telemetry, http, &dp])
            }
            _ => exposition::render(&table, &[&services, &self.telemetry, http]),
        }
    }

    /// `/stats` now.
    fn stats(&self) -> (Arc<Table>, Option<TelemetrySnapshot>) {
        (self.table.load_full(), self.counts())
    }

    /// `/readyz`: 200 only while serving with no problem reported; else 503 and why.
    fn readyz(&self) -> Response<Body> {
        match self.phase() {
            Phase::Ready => {
                let mut problems = self.readiness.problems();
                if let Some(dp) = self.data_plane.get() {
                    problems.extend(panic_problems(&dp.panics, SystemTime::now()));
                }
                if problems.is_empty() {
                    text(StatusCode::OK, "ready\n".into())
                } else {
                    let mut body = problems.join("\n");
                    body.push('\n');
                    text(StatusCode::SERVICE_UNAVAILABLE, body)
                }
            }
            Phase::Starting => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
            Phase::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into()),
        }
    }
}

/// Panics in this window, at least [`PANICS_NOT_READY`] of them, make `/readyz` answer 503.
const PANIC_WINDOW: Duration = Duration::from_secs(60);
/// See [`PANIC_WINDOW`]: one contained panic costs one connection, and is no reason to take
/// the node out of its load balancers; panics that keep coming are.
const PANICS_NOT_READY: usize = 10;

/// What the data plane's panics say against readiness at `now`: every panic that stopped
/// something for good (an accept loop, a UDP frontend, a worker), and panics that keep coming.
fn panic_problems(panics: &proxy_core::Panics, now: SystemTime) -> Vec<String> {
    let mut problems: Vec<String> = panics
        .lasting()
        .iter()
        .map(|p| format!("data plane: {p} (stopped until ringlb restarts)"))
        .collect();
    let recent = panics.since(PANIC_WINDOW, now);
    if recent >= PANICS_NOT_READY {
        let last = panics.last().map(|p| p.to_string()).unwrap_or_default();
        problems.push(format!(
            "data plane: {recent} task panics in the last minute; the latest: {last}"
        ));
    }
    problems
}

/// How long `/udp/flows` waits for busy workers to list their flows.
const FLOW_LIST_WAIT: Duration = Duration::from_secs(1);

/// Serves `listener` (from [`bind`]) on the control runtime of `plane`.
pub fn start(
    plane: &Plane,
    listener: std::net::TcpListener,
    state: Arc<AdminState>,
) -> anyhow::Result<HttpServer> {
    let addr = listener.local_addr().context("admin listener address")?;
    let spec = Spec {
        kind: ServerKind::Admin,
        name: format!("admin {addr}"),
        limits: Limits::ADMIN,
    };
    let handler: control::http::Handler = Arc::new(move |req| {
        let state = Arc::clone(&state);
        Box::pin(async move { respond(&state, req).await })
    });
    HttpServer::start(plane, listener, spec, handler).context("cannot serve the admin API")
}

/// What each path serves, for `/` and for 404s.
const INDEX: &str = "ringlb admin API (GET; POST only where said)
  /healthz        200 while the process runs
  /readyz         200 once listeners are bound and nothing is wrong; else 503 and why
  /config         the live table as JSON
  /stats          counters per service and backend: JSON, or ?format=text for a table
  /metrics        Prometheus text exposition
  /udp/flows      live UDP flows as JSON (what `--takeover` reads)
  /decision-log   the per-connection decision log's state as JSON;
                  POST /decision-log?enabled=true|false switches it
";

/// Routes one request. Unknown paths get 404 whatever the method; known ones 405 for a
/// method they do not take (hyper leaves the body out of HEAD answers).
async fn respond(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let req = &req;
    let path = req.uri().path();
    let allow = match path {
        "/" | "/healthz" | "/readyz" | "/config" | "/stats" | "/metrics" | "/udp/flows" => {
            "GET, HEAD"
        }
        "/decision-log" => "GET, HEAD, POST",
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                format!("no such path: {path}\n\n{INDEX}"),
            )
        }
    };
    let method = req.method();
    let allowed = method == Method::GET
        || method == Method::HEAD
        || (method == Method::POST && allow.contains("POST"));
    if !allowed {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not served on {path}: use {allow}\n"),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => state.readyz(),
        "/config" => json(&ConfigView::new(&state.table.load())),
        "/stats" => match query_param(req, "format") {
            None | Some("json") => {
                let (table, counts) = state.stats();
                json(&StatsView::new(&table, counts.as_ref()))
            }
            Some("text") => {
                let (table, counts) = state.stats();
                text(
                    StatusCode::OK,
                    StatsView::new(&table, counts.as_ref()).to_text(),
                )
            }
            Some(other) => text(
                StatusCode::BAD_REQUEST,
                format!("unknown format {other:?}: json (the default) or text\n"),
            ),
        },
        "/metrics" => with_type(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics(),
        ),
        "/decision-log" => decision_log(state, req),
        "/udp/flows" => {
            let mut flows = Vec::new();
            if let Some(dp) = state.data_plane.get() {
                // A worker that has not answered by then is left out; the others are listed.
                let _ = tokio::time::timeout(FLOW_LIST_WAIT, dp.flows.udp(&mut flows)).await;
            }
            json(&UdpFlowsView::new(state.phase() == Phase::Draining, &flows))
        }
        _ => text(StatusCode::OK, INDEX.into()),
    }
}

/// `/decision-log`: its state (GET), or switched with `?enabled=true|false` (POST).
fn decision_log(state: &AdminState, req: &Request<Incoming>) -> Response<Body> {
    let Some(dp) = state.data_plane.get() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into());
    };
    if req.method() == Method::POST {
        // A browser page on another site may send a simple POST to a loopback port; it always
        // says where it comes from. Scripts and curl do not send Origin.
        if req.headers().contains_key(ORIGIN) {
            return text(
                StatusCode::FORBIDDEN,
                "cross-origin requests may not switch the decision log\n".into(),
            );
        }
        match query_param(req, "enabled") {
            Some("true") => dp.decisions.set_enabled(true),
            Some("false") => dp.decisions.set_enabled(false),
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "say POST /decision-log?enabled=true or ?enabled=false\n".into(),
                )
            }
        }
    }
    json(&dp.decisions.status())
}

/// The value of `name` in the query string (no percent-decoding: values here are plain words).
fn query_param<'r>(req: &'r Request<Incoming>, name: &str) -> Option<&'r str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn json(view: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_string_pretty(view) {
        Ok(mut body) => {
            body.push('\n');
            with_type(StatusCode::OK, "application/json", body)
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_core::{PanicRecord, Panics, TaskKind};

    fn panic(task: Option<TaskKind>, at: SystemTime) -> PanicRecord {
        PanicRecord {
            at,
            worker: 0,
            task,
            message: "boom".into(),
        }
    }

    #[test]
    fn readiness_fails_on_a_lasting_panic_or_on_panics_that_keep_coming() {
        let now = SystemTime::now();
        let panics = Panics::default();
        for _ in 0..PANICS_NOT_READY - 1 {
            panics.record(panic(Some(TaskKind::Connection), now));
        }
        assert!(
            panic_problems(&panics, now).is_empty(),
            "a few contained panics keep the node ready"
        );
        panics.record(panic(Some(TaskKind::UdpFlow), now));
        let problems = panic_problems(&panics, now);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("data plane: 10 task panics in the last minute"),
            "{problems:?}"
        );
        // A minute later they are history.
        assert!(panic_problems(&panics, now + PANIC_WINDOW + Duration::from_secs(1)).is_empty());

        panics.record(panic(Some(TaskKind::Accept), now));
        let later = now + Duration::from_secs(3600);
        assert_eq!(
            panic_problems(&panics, later),
            ["data plane: worker 0: accept task panicked: boom (stopped until ringlb restarts)"]
        );
    }
}
