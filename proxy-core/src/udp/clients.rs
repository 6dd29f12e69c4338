//! The shell's client side: a batch of client datagrams goes through the flow manager, which
//! says for each whether it rides a live flow or asks for a new one; runs of one flow leave as
//! one segmented send, and a new flow gets its upstream socket here. Only system calls and
//! counting happen here; every decision is the manager's.

use std::cell::Cell;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use config::ServiceEntry;
use monoio::net::udp::UdpSocket;

use super::flow_io::{FlowIo, FlowTrace};
use super::flows::{FlowId, FlowKey};
use super::manager::{Admitted, Refusal, Route};
use super::run::{Run, Runs};
use super::{sock, TableRef, Udp, UdpFrontend, BATCH};
use crate::connect::candidates;
use crate::task::{self, TaskKind};
use crate::telemetry::{AffinityOutcome, CloseReason, Count, Datagrams, Decision, ServiceStats};

/// A datagram that opened no flow, with what is known of it.
struct Refused<'a> {
    entry: &'a Arc<ServiceEntry>,
    key: FlowKey,
    affinity: AffinityOutcome,
    why: Refusal,
    /// The backend it was admitted to, when its upstream socket was refused.
    backend: Option<SocketAddr>,
    /// The error that refused its upstream socket, if that was it.
    error: Option<io::Error>,
}

impl Udp {
    /// Client datagrams `range` of a batch: each to its flow's backend, consecutive datagrams
    /// of one flow together, or opening a flow.
    pub(super) fn from_clients(
        self: &Rc<Self>,
        frontend: &Rc<UdpFrontend>,
        received: &[sock::Received; BATCH],
        range: std::ops::Range<usize>,
        bufs: &[u8],
        table: &TableRef,
    ) {
        let now = Instant::now();
        if let Some(busy) = &self.busy {
            busy.activity(now);
        }
        let mut runs = Runs::new();
        for i in range {
            let r = received[i];
            let key = frontend.flow_key(&r);
            let route = self.flows.borrow_mut().datagram(&key, now);
            match route {
                Route::Relay(id) => {
                    if let Some(done) = runs.push(id, i, r.len) {
                        self.flush(frontend, done, received, bufs, table);
                    }
                }
                Route::Open(expired) => {
                    if let Some((flow, why)) = expired {
                        flow.payload.ending(why);
                    }
                    if let Some(done) = runs.take() {
                        self.flush(frontend, done, received, bufs, table);
                    }
                    self.open(frontend, key, sock::slot(bufs, i, r.len), now, table);
                }
            }
        }
        if let Some(done) = runs.take() {
            self.flush(frontend, done, received, bufs, table);
        }
    }

    /// Sends a run of one flow's datagrams to its backend: one segmented send (UDP GSO) when
    /// there are several, so the run goes down the stack once.
    fn flush(
        self: &Rc<Self>,
        frontend: &Rc<UdpFrontend>,
        run: Run<FlowId>,
        received: &[sock::Received; BATCH],
        bufs: &[u8],
        table: &TableRef,
    ) {
        let flows = self.flows.borrow();
        let Some(flow) = flows.get(run.to) else {
            // An earlier run of this batch ended the flow (its backend refused): these
            // datagrams go to the flow that replaced it.
            drop(flows);
            return self.from_clients(frontend, received, run.range(), bufs, table);
        };
        let mut iov = [IoSlice::new(&[]); BATCH];
        let datagrams = sock::gather(bufs, received, run.range(), &mut iov);
        let fd = flow.payload.upstream.as_raw_fd();
        let result = match &flow.payload.header {
            Some(header) => send_headed(fd, header, datagrams),
            None => self.send_run(fd, datagrams, &run),
        };
        let stats = &flow.payload.stats;
        match result {
            Ok(sent) => {
                stats.add(Count::DatagramsToBackend, sent as u64);
                stats.add(Count::BytesToBackend, (sent * run.size) as u64);
                if let Some(t) = &flow.payload.trace {
                    t.to_backend(sent as u64, (sent * run.size) as u64);
                }
                let lost = run.count - sent;
                if lost > 0 {
                    stats.add(Count::DatagramsDropped, lost as u64);
                }
            }
            Err(e) if sock::is_refused(&e) => {
                // The backend answered an earlier datagram with ICMP unreachable: the flow
                // ends and these datagrams are balanced afresh (a new socket cannot be refused
                // yet, so this does not recurse again).
                drop(flows);
                let ended = self.flows.borrow_mut().refused(run.to);
                if let Some((flow, why)) = ended {
                    flow.payload.ending(why);
                }
                self.from_clients(frontend, received, run.range(), bufs, table);
            }
            Err(_) => stats.add(Count::DatagramsDropped, run.count as u64),
        }
    }

    /// Sends `datagrams` (the run `run`) on the connected socket `fd`: segmented when the run
    /// has several and segmentation works, else one by one until one fails. Returns how many
    /// left, or the error when none did.
    fn send_run(
        &self,
        fd: RawFd,
        datagrams: &[IoSlice<'_>],
        run: &Run<FlowId>,
    ) -> io::Result<usize> {
        if let Some(size) = run.segment().filter(|_| self.gso.get()) {
            match sock::send_segments(fd, datagrams, size) {
                Ok(_) => return Ok(run.count),
                Err(e) if sock::is_refused(&e) => return Err(e),
                // One by one below (EINVAL: this segment does not fit the route's MTU).
                Err(e) => self.gso_failed(&e),
            }
        }
        let mut sent = 0;
        for d in datagrams {
            match sock::send(fd, d) {
                Ok(_) => sent += 1,
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// A segmented send failed with `e`: segmentation is turned off for the worker when `e`
    /// says the socket or device cannot segment at all.
    pub(super) fn gso_failed(&self, e: &io::Error) {
        if sock::disables_gso(e) && self.gso.replace(false) {
            tracing::info!(error = %e, "UDP segmentation offload unavailable: sending datagrams one by one");
        }
    }

    /// The datagram `data` of `key` asks for a new flow: the manager admits it (or not), and
    /// an admitted flow gets its upstream socket, its first datagram and its reply task.
    fn open(
        self: &Rc<Self>,
        frontend: &Rc<UdpFrontend>,
        key: FlowKey,
        data: &[u8],
        now: Instant,
        table: &TableRef,
    ) {
        let table = table.load();
        let Some(entry) = table.lookup(&frontend.key) else {
            return; // the frontend just left the table
        };
        let stats = self.telemetry.stats(entry);
        let admission = self
            .flows
            .borrow()
            .admit(entry, frontend.key.addr, &key, now);
        stats.affinity(admission.affinity);
        let refused = |why, backend, error| Refused {
            entry,
            key,
            affinity: admission.affinity,
            why,
            backend,
            error,
        };
        let admitted = match admission.verdict {
            Ok(admitted) => admitted,
            Err(why) => return self.refuse(&stats, refused(why, None, None), now),
        };
        let source = entry
            .service
            .from_client(key.client.ip(), admitted.address.ip())
            .then_some(key.client);
        let upstream =
            sock::upstream_socket(admitted.address, source).and_then(UdpSocket::from_std);
        let upstream = match upstream {
            Ok(s) => Rc::new(s),
            // Dropping `admitted` gives its place, descriptor and backend load back.
            Err(e) => {
                let why = Refusal::of_socket_error(&e);
                let backend = Some(admitted.address);
                return self.refuse(&stats, refused(why, backend, Some(e)), now);
            }
        };
        let trace = self.trace(entry, key, admitted.address, admission.affinity, now);
        let header = (entry.service.proxy_protocol.is_some())
            .then(|| crate::proxy_protocol::datagram_header(key.client, key.local).into());
        send_first(&upstream, header.as_deref(), data, &stats, trace.as_deref());
        stats.add(Count::FlowsOpened, 1);
        let idle = entry.service.idle_timeout;
        let Admitted {
            address,
            place,
            fds,
            load,
        } = admitted;
        let io = FlowIo {
            upstream: Rc::clone(&upstream),
            frontend: Rc::clone(frontend),
            place,
            stats,
            _load: load,
            _fds: fds,
            trace,
            header,
        };
        let id = self.flows.borrow_mut().insert(key, address, idle, io, now);
        self.alarm
            .wake_if_before(monoio::time::Instant::from_std(now + idle));
        let source = frontend.wildcard.then_some(key.local.ip());
        task::spawn(
            TaskKind::UdpFlow,
            Rc::clone(self).replies(id, upstream, Rc::clone(frontend), key.client, source),
        );
    }

    /// The decision log's line of a new flow in the making, while the log is on.
    fn trace(
        &self,
        entry: &ServiceEntry,
        key: FlowKey,
        backend: SocketAddr,
        affinity: AffinityOutcome,
        now: Instant,
    ) -> Option<Rc<FlowTrace>> {
        self.telemetry.logging().then(|| {
            Rc::new(FlowTrace {
                telemetry: Rc::clone(&self.telemetry),
                client: key.client,
                frontend: key.local,
                backend,
                candidates: candidates(entry),
                affinity,
                opened: now,
                datagrams: Cell::default(),
                bytes: Cell::default(),
                close: Cell::new(CloseReason::Stopped),
            })
        })
    }

    /// Counts a datagram that opened no flow as the manager says, and tells the operator: a
    /// warning at most every few seconds (with the count since the last one) for a flow bound
    /// or descriptors used up, a line in the decision log for no backend.
    fn refuse(&self, stats: &ServiceStats, refused: Refused<'_>, now: Instant) {
        for &count in refused.why.counts() {
            stats.add(count, 1);
        }
        let service = &refused.entry.service.name;
        match refused.why {
            Refusal::MaxFlows => {
                if let Some(n) = self.at_max_flows.hit(now) {
                    let max_flows = refused.entry.service.max_flows;
                    tracing::warn!(%service, max_flows, refused = n, "UDP flow limit reached: dropping datagrams of new flows ({n} since the last warning)");
                }
            }
            Refusal::NoBackend => self.log_no_backend(&refused),
            Refusal::Descriptors => {
                self.fds.count_refused_udp();
                if let Some(n) = self.no_descriptors.hit(now) {
                    let error = refused.error.as_ref().map(ToString::to_string);
                    tracing::warn!(
                        %service, refused = n, budget = self.fds.cap(), error,
                        "out of descriptors: new UDP flows are refused ({n} since the last warning); raise the open-file limit (ulimit -n, LimitNOFILE) or lower max_flows"
                    );
                }
            }
            Refusal::Socket => {
                let error = refused.error.as_ref().map(ToString::to_string);
                let backend = refused.backend.map(|b| b.to_string());
                tracing::debug!(%service, backend, error, "cannot open a UDP upstream socket");
            }
        }
    }

    /// The decision log's line for a datagram no backend could take.
    fn log_no_backend(&self, refused: &Refused<'_>) {
        if !self.telemetry.logging() {
            return;
        }
        self.telemetry.log(Decision {
            service: Arc::clone(refused.entry),
            client: refused.key.client,
            frontend: refused.key.local,
            candidates: 0,
            affinity: refused.affinity,
            backend: None,
            attempts: 0,
            bytes_to_backend: 0,
            bytes_to_client: 0,
            datagrams: Some(Datagrams::default()),
            duration: Duration::ZERO,
            ended: std::time::SystemTime::now(),
            close: CloseReason::NoBackend,
        });
    }
}

/// Sends `datagrams` on the connected socket `fd` one by one, each after `header`, until one
/// fails. Returns how many left, or the error when none did.
fn send_headed(fd: RawFd, header: &[u8], datagrams: &[IoSlice<'_>]) -> io::Result<usize> {
    let mut sent = 0;
    for d in datagrams {
        match sock::send_with_header(fd, header, d) {
            Ok(_) => sent += 1,
            Err(e) if sent == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(sent)
}

/// Sends a new flow's first datagram `data` on its `upstream` socket (after `header` when
/// the service sends the PROXY protocol), and counts it (the client's bytes).
fn send_first(
    upstream: &UdpSocket,
    header: Option<&[u8]>,
    data: &[u8],
    stats: &ServiceStats,
    trace: Option<&FlowTrace>,
) {
    let fd = upstream.as_raw_fd();
    let sent = match header {
        Some(header) => sock::send_with_header(fd, header, data).map(|_| data.len()),
        None => sock::send(fd, data),
    };
    match sent {
        Ok(n) => {
            stats.add(Count::DatagramsToBackend, 1);
            stats.add(Count::BytesToBackend, n as u64);
            if let Some(t) = trace {
                t.to_backend(1, n as u64);
            }
        }
        Err(_) => stats.add(Count::DatagramsDropped, 1),
    }
}
