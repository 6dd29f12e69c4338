//! Connect with retry against scripted backends: the next backend after a refusal and after a
//! timeout, never the first pick twice, at most `max_connect_attempts`, the error classes,
//! affinity re-pinned to the backend that answered, and the counts it leaves.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use balancers::{Flow, SchedulerConfig, SchedulerKind};
use config::{Backend as BackendConfig, Config, Protocol, Service, ServiceEntry, Table};
use monoio::io::{AsyncReadRentExt, AsyncWriteRentExt};

use super::backend::Backend;
use super::{on_each_driver, within};
use crate::connect::{connect, ConnectFailure, Upstream};
use crate::telemetry::{AffinityOutcome, ConnectError, Count, Telemetry, WorkerTelemetry};

/// The deadline of one attempt here: what a blackholed backend costs.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// The frontend the service is looked up by (never bound: connect does not need it).
const FRONTEND: &str = "127.0.0.1:1";

/// The client the tests connect for.
const CLIENT: &str = "10.0.0.1:40000";

/// One `rr` service over `backends` (a fresh table, so the first pick is the first backend),
/// with the worker telemetry that counts its connect errors.
struct Rig {
    entry: Arc<ServiceEntry>,
    telemetry: Arc<Telemetry>,
    worker: WorkerTelemetry,
}

impl Rig {
    fn new(backends: &[&Backend], attempts: u32, affinity: bool, weight: u32) -> Rig {
        let mut svc = Service::with_defaults(
            "svc",
            Protocol::Tcp,
            vec![FRONTEND.parse().unwrap()],
            backends
                .iter()
                .map(|b| BackendConfig::new(b.addr, weight))
                .collect(),
            SchedulerConfig::new(SchedulerKind::Rr),
        );
        svc.connect_timeout = CONNECT_TIMEOUT;
        svc.max_connect_attempts = NonZeroU32::new(attempts).unwrap();
        svc.session_affinity = affinity.then_some(Duration::from_secs(600));
        let table = Table::build(
            &Config {
                services: vec![svc],
            },
            None,
        );
        let entry = Arc::clone(&table.services()[0]);
        let telemetry = Arc::new(Telemetry::new(1, true));
        let worker = WorkerTelemetry::new(Arc::clone(&telemetry), 0);
        Rig {
            entry,
            telemetry,
            worker,
        }
    }

    async fn connect(&self) -> Result<Upstream, ConnectFailure> {
        let flow = Flow {
            client: CLIENT.parse().unwrap(),
            dest: FRONTEND.parse().unwrap(),
        };
        let mut trace = self.worker.open(self.worker.stats(&self.entry), flow.dest);
        within("connect", connect(&self.entry, &flow, &[], &mut trace)).await
    }

    /// Attempts and retries, as the service's counts show them.
    fn attempts(&self) -> (u64, u64) {
        let snapshot = self.telemetry.snapshot();
        let s = snapshot.service(&self.entry);
        (
            s.count(Count::ConnectAttempts),
            s.count(Count::ConnectRetries),
        )
    }

    /// Failed attempts per class, in the order of [`ConnectError::ALL`].
    fn errors(&self) -> [u64; 4] {
        let snapshot = self.telemetry.snapshot();
        ConnectError::ALL.map(|kind| snapshot.service(&self.entry).connect_errors(kind))
    }

    fn affinity(&self) -> (u64, u64) {
        let snapshot = self.telemetry.snapshot();
        let s = snapshot.service(&self.entry);
        (
            s.affinity(AffinityOutcome::Hit),
            s.affinity(AffinityOutcome::Miss),
        )
    }
}

/// The upstream reaches an echo backend: one byte there and back.
async fn assert_echoes(upstream: Upstream) {
    let mut stream = upstream.stream;
    let (res, _) = stream.write_all(vec![5u8]).await;
    res.expect("send to the backend");
    let (res, back) = stream.read_exact(Vec::with_capacity(1)).await;
    res.expect("the backend's echo");
    assert_eq!(back, [5]);
}

#[test]
fn a_refused_then_a_blackholed_backend_are_passed_over_for_the_next() {
    on_each_driver(|kind| async move {
        let (refusing, blackhole, echo) =
            (Backend::refusing(), Backend::blackhole(), Backend::echo());
        let rig = Rig::new(&[&refusing, &blackhole, &echo], 3, false, 1);
        let started = Instant::now();
        let upstream = rig.connect().await.expect("the third backend");
        assert!(
            started.elapsed() >= CONNECT_TIMEOUT,
            "{kind}: the blackholed backend was waited for"
        );
        assert_eq!(upstream.backend, 2, "{kind}");
        assert!(upstream.guard.is_active(), "{kind}: counted as active");
        assert_eq!(rig.entry.states[2].active(), 1, "{kind}");
        assert_eq!(rig.attempts(), (3, 2), "{kind}: attempts, retries");
        assert_eq!(
            rig.errors(),
            [1, 1, 0, 0],
            "{kind}: one refused, one timeout"
        );
        assert_echoes(upstream).await;
        assert_eq!(echo.accepted(), 1, "{kind}");
        for state in &rig.entry.states {
            assert_eq!((state.active(), state.inactive()), (0, 0), "{kind}");
        }
    });
}

#[test]
fn the_first_pick_is_never_tried_twice() {
    on_each_driver(|kind| async move {
        let (a, b) = (Backend::refusing(), Backend::refusing());
        let rig = Rig::new(&[&a, &b], 5, false, 1);
        let failed = rig.connect().await.err();
        assert_eq!(failed, Some(ConnectFailure::AllFailed), "{kind}");
        assert_eq!(
            rig.attempts(),
            (2, 1),
            "{kind}: each backend once, of 5 allowed"
        );
        assert_eq!(rig.errors(), [2, 0, 0, 0], "{kind}");
    });
}

#[test]
fn attempts_stop_at_max_connect_attempts() {
    on_each_driver(|kind| async move {
        let refusing: Vec<Backend> = (0..3).map(|_| Backend::refusing()).collect();
        let echo = Backend::echo();
        let mut all: Vec<&Backend> = refusing.iter().collect();
        all.push(&echo);
        let rig = Rig::new(&all, 3, false, 1);
        let failed = rig.connect().await.err();
        assert_eq!(failed, Some(ConnectFailure::AllFailed), "{kind}");
        assert_eq!(rig.attempts(), (3, 2), "{kind}");
        assert_eq!(rig.errors(), [3, 0, 0, 0], "{kind}");
        assert_eq!(
            echo.accepted(),
            0,
            "{kind}: the fourth backend is never tried"
        );
    });
}

#[test]
fn no_eligible_backend_is_told_from_failed_attempts() {
    on_each_driver(|kind| async move {
        let echo = Backend::echo();
        let quiesced = Rig::new(&[&echo], 3, false, 0);
        let failed = quiesced.connect().await.err();
        assert_eq!(failed, Some(ConnectFailure::NoBackend), "{kind}: weight 0");
        let empty = Rig::new(&[], 3, false, 1);
        let failed = empty.connect().await.err();
        assert_eq!(
            failed,
            Some(ConnectFailure::NoBackend),
            "{kind}: no backend"
        );
        assert_eq!(quiesced.attempts(), (0, 0), "{kind}");
        assert_eq!(empty.attempts(), (0, 0), "{kind}");
        assert_eq!(echo.accepted(), 0, "{kind}");
    });
}

#[test]
fn a_failed_pinned_backend_re_pins_the_client_to_the_one_that_answered() {
    on_each_driver(|kind| async move {
        let (refusing, echo) = (Backend::refusing(), Backend::echo());
        let rig = Rig::new(&[&refusing, &echo], 3, true, 1);
        let affinity = rig.entry.affinity.as_ref().expect("affinity configured");
        let client: IpAddr = CLIENT.parse::<SocketAddr>().unwrap().ip();
        affinity.record(client, 0, Instant::now());

        let first = rig.connect().await.expect("the second backend");
        assert_eq!(first.backend, 1, "{kind}");
        assert_eq!(
            affinity.lookup(client, Instant::now(), |_| true),
            Some(1),
            "{kind}: re-pinned"
        );
        assert_eq!(rig.attempts(), (2, 1), "{kind}");

        let second = rig.connect().await.expect("the pinned backend");
        assert_eq!(second.backend, 1, "{kind}");
        assert_eq!(rig.attempts(), (3, 1), "{kind}: straight there, no retry");
        assert_eq!(rig.affinity(), (2, 0), "{kind}: both from the pin");
        assert_eq!(rig.errors(), [1, 0, 0, 0], "{kind}");
        assert_echoes(second).await;
    });
}

#[test]
fn connect_errors_are_classed_by_errno() {
    let class = |errno| ConnectError::of(&io::Error::from_raw_os_error(errno));
    assert_eq!(class(libc::ECONNREFUSED), ConnectError::Refused);
    assert_eq!(class(libc::ETIMEDOUT), ConnectError::Timeout);
    for errno in [
        libc::ENETUNREACH,
        libc::EHOSTUNREACH,
        libc::EHOSTDOWN,
        libc::ENETDOWN,
    ] {
        assert_eq!(class(errno), ConnectError::Unreachable, "errno {errno}");
    }
    for errno in [libc::EMFILE, libc::EADDRNOTAVAIL, libc::ECONNRESET] {
        assert_eq!(class(errno), ConnectError::Other, "errno {errno}");
    }
    assert_eq!(
        ConnectError::of(&io::Error::other("no errno")),
        ConnectError::Other
    );
}
