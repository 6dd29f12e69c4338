//! The decision log's writer: one thread drains the data plane's queue and writes one JSON
//! line per TCP connection or UDP flow, and one per change of a backend's state (marked down
//! or up, ejected or readmitted), to a file or to stdout.
//!
//! Workers only hand finished records to a bounded queue ([`proxy_core::DecisionLog`]); the
//! formatting and every write happen on this thread, so a slow disk or a blocked pipe costs the
//! data plane nothing but dropped records (counted). A file is opened for appending at start
//! (an unwritable path is a startup error) and opened again on SIGHUP and whenever the log is
//! switched on, so `logrotate` can move it away.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use proxy_core::{BackendChange, BackendEvent, Decision, Record, Telemetry};
use serde::Serialize;

/// How long the writer waits for a record before it looks at its flags again.
const POLL: Duration = Duration::from_millis(100);
/// Records written per batch (then flushed) at most.
const BATCH: usize = 1024;

/// Where lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Standard output (`-`), between ringlb's own `listening`/`ready` lines.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

impl Destination {
    /// `-` is stdout, anything else a file path.
    pub fn parse(s: &Path) -> Destination {
        if s == Path::new("-") {
            Destination::Stdout
        } else {
            Destination::File(s.to_owned())
        }
    }

    fn describe(&self) -> String {
        match self {
            Destination::Stdout => "stdout".to_owned(),
            Destination::File(path) => path.display().to_string(),
        }
    }
}

/// What the writer thread writes to.
enum Sink {
    Stdout,
    File(File),
}

impl Sink {
    fn open(destination: &Destination) -> io::Result<Sink> {
        match destination {
            Destination::Stdout => Ok(Sink::Stdout),
            Destination::File(path) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Sink::File),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File(file) => file.write_all(bytes),
        }
    }
}

/// The opened destination, before the data plane starts.
pub struct Output {
    destination: Destination,
    sink: Sink,
    /// Log from the start (`--decision-log` given) or only once switched on.
    on_at_start: bool,
    reopen: Arc<AtomicBool>,
}

impl Output {
    /// Opens `flag` (`--decision-log`): a file now, so that a bad path fails the start; with
    /// no flag, stdout, switched off until asked.
    pub fn open(flag: Option<&Path>) -> anyhow::Result<Output> {
        let destination = flag.map_or(Destination::Stdout, Destination::parse);
        let sink = Sink::open(&destination)
            .with_context(|| format!("cannot open the decision log {}", destination.describe()))?;
        Ok(Output {
            destination,
            sink,
            on_at_start: flag.is_some(),
            reopen: Arc::default(),
        })
    }

    /// Set from the signal thread on SIGHUP: the file is opened again before the next write.
    pub fn reopen_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.reopen)
    }
}

/// The state the admin API shows and switches.
#[derive(Debug)]
pub struct DecisionLogControl {
    telemetry: Arc<Telemetry>,
    destination: Destination,
    written: AtomicU64,
    write_errors: AtomicU64,
    reopen: Arc<AtomicBool>,
    stop: AtomicBool,
}

/// What `GET /decision-log` answers.
#[derive(Debug, Serialize)]
pub struct Status {
    enabled: bool,
    destination: String,
    /// Lines written.
    written: u64,
    /// Records dropped because the writer fell behind (queue full).
    dropped: u64,
    /// Lines lost to write errors.
    write_errors: u64,
}

impl DecisionLogControl {
    /// Switches logging on (the file is opened again first) or off.
    pub fn set_enabled(&self, on: bool) {
        if on {
            self.reopen.store(true, Relaxed);
        }
        self.telemetry.decision_log().set_enabled(on);
        tracing::info!(
            destination = %self.destination.describe(),
            "decision log {}",
            if on { "on" } else { "off" }
        );
    }

    /// Whether connections are being logged.
    pub fn enabled(&self) -> bool {
        self.telemetry.decision_log().enabled()
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Relaxed)
    }

    /// Records dropped in the queue so far.
    pub fn dropped(&self) -> u64 {
        self.telemetry.decision_log().dropped()
    }

    /// Lines lost to write errors so far.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Relaxed)
    }

    /// The state now.
    pub fn status(&self) -> Status {
        Status {
            enabled: self.enabled(),
            destination: self.destination.describe(),
            written: self.written(),
            dropped: self.dropped(),
            write_errors: self.write_errors(),
        }
    }
}

/// The running writer thread.
#[derive(Debug)]
pub struct DecisionWriter {
    control: Arc<DecisionLogControl>,
    thread: Option<JoinHandle<()>>,
}

impl DecisionWriter {
    /// Starts draining `telemetry`'s decision log into `output`, switched on when the flag
    /// asked for it.
    pub fn start(output: Output, telemetry: Arc<Telemetry>) -> anyhow::Result<DecisionWriter> {
        let control = Arc::new(DecisionLogControl {
            telemetry,
            destination: output.destination,
            written: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            reopen: output.reopen,
            stop: AtomicBool::new(false),
        });
        let shared = Arc::clone(&control);
        let sink = output.sink;
        let thread = std::thread::Builder::new()
            .name("ringlb-decisions".into())
            .spawn(move || run(&shared, sink))
            .context("cannot start the decision log thread")?;
        if output.on_at_start {
            control.set_enabled(true);
        }
        Ok(DecisionWriter {
            control,
            thread: Some(thread),
        })
    }

    /// The switch and counters, for the admin API.
    pub fn control(&self) -> Arc<DecisionLogControl> {
        Arc::clone(&self.control)
    }

    /// Writes what is queued and stops (call after the data plane stopped).
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.control.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DecisionWriter {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The thread body: batches of lines, each batch one write, until stopped and drained.
fn run(control: &DecisionLogControl, mut sink: Sink) {
    let log = control.telemetry.decision_log();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut failing = false;
    loop {
        let first = log.next(POLL);
        if control.reopen.swap(false, Relaxed) {
            match Sink::open(&control.destination) {
                Ok(s) => sink = s,
                Err(e) => tracing::warn!(
                    destination = %control.destination.describe(),
                    error = %e,
                    "cannot reopen the decision log; writing to the open file"
                ),
            }
        }
        let Some(first) = first else {
            if control.stop.load(Relaxed) {
                break;
            }
            continue;
        };
        let mut lines = 0u64;
        for record in std::iter::once(first).chain(std::iter::from_fn(|| log.try_next())) {
            match &record {
                Record::Flow(decision) => line(&mut buf, decision),
                Record::Backend(event) => event_line(&mut buf, event),
            }
            lines += 1;
            if lines as usize >= BATCH {
                break;
            }
        }
        match sink.write(&buf) {
            Ok(()) => {
                control.written.fetch_add(lines, Relaxed);
                failing = false;
            }
            Err(e) => {
                control.write_errors.fetch_add(lines, Relaxed);
                if !failing {
                    tracing::warn!(
                        destination = %control.destination.describe(),
                        error = %e,
                        "cannot write the decision log; lines are lost until it works again"
                    );
                }
                failing = true;
            }
        }
        buf.clear();
    }
}

/// One JSON line: keys in a fixed order, addresses as `IP:port`, time in RFC 3339 (UTC).
#[derive(Debug, Serialize)]
struct Line<'a> {
    time: String,
    service: &'a str,
    protocol: &'static str,
    client: SocketAddr,
    frontend: SocketAddr,
    scheduler: &'static str,
    candidates: u32,
    affinity: &'static str,
    backend: Option<SocketAddr>,
    attempts: u32,
    bytes_to_backend: u64,
    bytes_to_client: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    datagrams_to_backend: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    datagrams_to_client: Option<u64>,
    duration_seconds: f64,
    close: &'static str,
}

fn line(buf: &mut Vec<u8>, d: &Decision) {
    let svc = &d.service.service;
    let view = Line {
        time: humantime::format_rfc3339_micros(d.ended).to_string(),
        service: &svc.name,
        protocol: svc.protocol.name(),
        client: d.client,
        frontend: d.frontend,
        scheduler: svc.scheduler.kind.name(),
        candidates: d.candidates,
        affinity: d.affinity.name(),
        backend: d.backend,
        attempts: d.attempts,
        bytes_to_backend: d.bytes_to_backend,
        bytes_to_client: d.bytes_to_client,
        datagrams_to_backend: d.datagrams.map(|g| g.to_backend),
        datagrams_to_client: d.datagrams.map(|g| g.to_client),
        duration_seconds: d.duration.as_secs_f64(),
        close: d.close.name(),
    };
    // Serializing plain strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &view);
    buf.push(b'\n');
}

/// One JSON line about a backend: `event` tells it from a flow's line.
#[derive(Debug, Serialize)]
struct EventLine<'a> {
    time: String,
    service: &'a str,
    backend: SocketAddr,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ejection_seconds: Option<f64>,
}

fn event_line(buf: &mut Vec<u8>, e: &BackendEvent) {
    let (reason, failures, ejection_seconds) = match &e.change {
        BackendChange::Down { reason } => (Some(reason.as_str()), None, None),
        BackendChange::Ejected { failures, time } => {
            (None, Some(*failures), Some(time.as_secs_f64()))
        }
        BackendChange::Up | BackendChange::Readmitted => (None, None, None),
    };
    let view = EventLine {
        time: humantime::format_rfc3339_micros(e.at).to_string(),
        service: &e.service,
        backend: e.backend,
        event: e.change.name(),
        reason,
        failures,
        ejection_seconds,
    };
    // Serializing plain strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &view);
    buf.push(b'\n');
}
