//! UDP: a flow-tracked relay. Each client flow (client address, local address) gets its own
//! connected upstream socket to the backend the scheduler picked, keeps it for its life, and
//! ends when idle for the service's timeout or the moment its backend stops being usable.
//!
//! The flow table ([`flows`]) is pure code; this module is its I/O shell: one task per
//! frontend socket reading client datagrams, one task per flow reading the backend's replies,
//! and one sweeper per worker ending idle flows. Datagrams move with non-blocking system calls
//! after the runtime reports readiness, so a busy socket is drained many datagrams per wake-up.
//! `LIFECYCLE.md` beside this file describes a flow's states and transitions.

mod busy;
mod coalesce;
mod flow_io;
mod flows;
pub(crate) mod handover;
mod run;
#[cfg(test)]
mod sim;
pub(crate) mod sock;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use balancers::Flow as Pick;
use config::{FrontendKey, ServiceEntry, Table};
use monoio::net::udp::UdpSocket;

use crate::alarm::Alarm;
use crate::connect::{candidates, choose_traced, Choice};
use crate::fds::{is_exhaustion, FdBudget};
use crate::sys::with_socket;
use crate::task::{self, TaskKind};
use crate::telemetry::{AffinityOutcome, CloseReason, Count, Datagrams, Decision, WorkerTelemetry};
use crate::throttle::Throttle;
pub(crate) use busy::BusyPoll;
pub(crate) use coalesce::Coalesce;
use flow_io::{FlowIo, FlowTrace};
use flows::{Flow, FlowId, FlowKey, FlowTable, Lookup};
use handover::{HandedOver, UdpFlowInfo};
use run::{Run, Runs};

/// Datagrams a reply task handles per wake-up before letting the worker's other tasks run.
const BATCH: usize = sock::BATCH;
/// Batches a frontend task receives per wake-up before letting the other tasks run.
const ROUNDS: usize = 4;
/// How long a stopping worker waits for its UDP sockets to close.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// One worker's UDP state: its flows, the sweeper's alarm and the datagram buffer.
pub(crate) struct Udp {
    flows: RefCell<FlowTable<FlowIo>>,
    alarm: Alarm,
    /// One batch in flight at a time per worker: every receive is followed by its sends
    /// with no await between, so one buffer serves every socket of the worker.
    batch: RefCell<Box<[u8]>>,
    /// Whether UDP segmentation offload works here (cleared on the first refusal).
    gso: Cell<bool>,
    /// Low-latency mode: keeps the worker polling for a while after each relayed datagram.
    busy: Option<Rc<BusyPoll>>,
    /// Receive coalescing: a short pause for a socket behind its traffic, so it is drained in
    /// fuller batches.
    coalesce: Option<Rc<Coalesce>>,
    /// `recvmmsg` headers for flows' upstream sockets, IPv4 and IPv6 (nix keeps the address
    /// length the kernel wrote per header, so each family has its own).
    reply_headers: [RefCell<sock::RecvHeaders>; 2],
    telemetry: Rc<WorkerTelemetry>,
    /// Flows of the process this one replaced: their clients keep their backends.
    handed_over: Arc<HandedOver>,
    /// Every frontend socket this worker opened, until it is dropped (and closed).
    sockets: RefCell<Vec<std::rc::Weak<UdpFrontend>>>,
    /// The data plane's share of the open-file limit: one descriptor per flow.
    fds: Arc<FdBudget>,
    /// New flows refused at a service's `max_flows`.
    at_max_flows: Throttle,
    /// New flows refused for want of descriptors.
    no_descriptors: Throttle,
}

/// One UDP frontend socket of this worker.
pub(crate) struct UdpFrontend {
    socket: UdpSocket,
    key: FrontendKey,
    /// Bound to `0.0.0.0` or `[::]`: the local address of a flow comes from packet info.
    wildcard: bool,
    closed: Cell<bool>,
    headers: RefCell<sock::RecvHeaders>,
}

impl UdpFrontend {
    /// The flow a datagram belongs to: its client and the local address it was sent to.
    fn flow_key(&self, r: &sock::Received) -> FlowKey {
        let local_ip = match r.dest {
            Some(ip) if self.wildcard => ip,
            _ => self.key.addr.ip(),
        };
        FlowKey {
            client: r.client,
            local: SocketAddr::new(local_ip, self.key.addr.port()),
        }
    }

    /// Stops reading: shutdown(2) wakes the pending readiness wait (for an unbound UDP socket
    /// the call reports `ENOTCONN` but still wakes waiters, see `inet_shutdown`).
    pub(crate) fn close(&self) {
        self.closed.set(true);
        let _ = with_socket(&self.socket, |s| s.shutdown(std::net::Shutdown::Read));
    }
}

impl Udp {
    pub(crate) fn new(
        seed: u64,
        wake: UdpWake,
        telemetry: Rc<WorkerTelemetry>,
        handed_over: Arc<HandedOver>,
        fds: Arc<FdBudget>,
    ) -> Self {
        Self {
            flows: RefCell::new(FlowTable::new(seed)),
            alarm: Alarm::default(),
            batch: RefCell::new(sock::batch_buffer()),
            gso: Cell::new(true),
            busy: wake.busy_poll.map(|budget| Rc::new(BusyPoll::new(budget))),
            // Busy polling already reaps without sleeping; a pause would only add latency.
            coalesce: wake
                .coalesce
                .filter(|_| wake.busy_poll.is_none())
                .and_then(|window| match Coalesce::new(window) {
                    Ok(c) => Some(Rc::new(c)),
                    Err(e) => {
                        tracing::warn!(error = %e, "no timer for UDP receive coalescing: coalescing is off on this worker");
                        None
                    }
                }),
            reply_headers: [
                RefCell::new(sock::RecvHeaders::new()),
                RefCell::new(sock::RecvHeaders::new()),
            ],
            telemetry,
            handed_over,
            sockets: RefCell::new(Vec::new()),
            fds,
            at_max_flows: Throttle::default(),
            no_descriptors: Throttle::default(),
        }
    }

    /// This worker's live flows at `now`, for listing and for a successor process.
    pub(crate) fn flows(&self, now: Instant) -> Vec<UdpFlowInfo> {
        self.flows
            .borrow()
            .iter()
            .map(|f| UdpFlowInfo {
                service: f.payload.service.service.name.clone(),
                frontend: f.payload.frontend.key.addr,
                client: f.key.client,
                local: f.key.local,
                backend: f.backend,
                idle_for: f.idle_for(now),
                idle_timeout: f.idle,
            })
            .collect()
    }

    /// The low-latency mode's keeper, to spawn on the worker (`None` when the mode is off).
    pub(crate) fn busy_poll(&self) -> Option<Rc<BusyPoll>> {
        self.busy.clone()
    }

    /// Receive coalescing's keeper, to spawn on the worker (`None` when it is off).
    pub(crate) fn coalesce(&self) -> Option<Rc<Coalesce>> {
        self.coalesce.clone()
    }

    /// Starts serving a frontend socket (converted on this thread so it registers here).
    pub(crate) fn listen(
        self: &Rc<Self>,
        key: FrontendKey,
        socket: std::net::UdpSocket,
        table: Arc<TableRef>,
    ) -> io::Result<Rc<UdpFrontend>> {
        let frontend = Rc::new(UdpFrontend {
            socket: UdpSocket::from_std(socket)?,
            key,
            wildcard: key.addr.ip().is_unspecified(),
            closed: Cell::new(false),
            headers: RefCell::new(sock::RecvHeaders::new()),
        });
        task::spawn(
            TaskKind::UdpFrontend,
            Rc::clone(self).frontend_loop(Rc::clone(&frontend), table),
        );
        let mut sockets = self.sockets.borrow_mut();
        sockets.retain(|s| s.strong_count() > 0);
        sockets.push(Rc::downgrade(&frontend));
        Ok(frontend)
    }

    /// Ends the flows of a frontend that stopped (their replies would have no socket to leave
    /// from).
    pub(crate) fn unlisten(&self, key: &FrontendKey) {
        self.end_where(|f| f.payload.frontend.key != *key, CloseReason::Stopped);
    }

    /// After a table swap: ends every flow whose backend is no longer usable for its frontend
    /// (removed from the service, weight 0, or the frontend left the table), so the client's
    /// next datagram is balanced again. Other flows keep their backend.
    pub(crate) fn revalidate(&self, table: &Table) {
        let mut usable: HashMap<FrontendKey, HashSet<SocketAddr>> = HashMap::new();
        self.end_where(
            |f| {
                let key = f.payload.frontend.key;
                usable
                    .entry(key)
                    .or_insert_with(|| {
                        table.lookup(&key).map_or_else(HashSet::new, |e| {
                            e.backends
                                .iter()
                                .filter(|b| b.weight > 0)
                                .map(|b| b.address)
                                .collect()
                        })
                    })
                    .contains(&f.backend)
            },
            CloseReason::Rebalanced,
        );
    }

    /// Ends every flow (the worker stops).
    pub(crate) fn clear(&self) {
        let mut ended = Vec::new();
        self.flows.borrow_mut().clear(&mut ended);
        drop(ended);
    }

    /// After the frontends were closed and the flows ended: waits (at most [`CLOSE_WAIT`])
    /// until the tasks holding the frontend sockets have seen it and every socket is closed.
    /// A UDP socket stays in its `SO_REUSEPORT` group until its last reference goes, and the
    /// kernel keeps handing it a share of the port's datagrams, which are lost. Left to process
    /// exit, an io_uring poll still pending on it would keep it there until the ring is torn
    /// down after exit: a restart (the new process on the same port) would lose datagrams.
    pub(crate) async fn sockets_closed(&self) {
        let deadline = Instant::now() + CLOSE_WAIT;
        loop {
            self.sockets.borrow_mut().retain(|s| s.strong_count() > 0);
            if self.sockets.borrow().is_empty() || Instant::now() >= deadline {
                break;
            }
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        // One more pass of the runtime submits the last sockets' close.
        monoio::time::sleep(Duration::from_millis(1)).await;
    }

    fn end_where(&self, keep: impl FnMut(&Flow<FlowIo>) -> bool, why: CloseReason) {
        let mut ended = Vec::new();
        self.flows.borrow_mut().retain(keep, &mut ended);
        for (flow, _) in &ended {
            flow.payload.ending(why);
        }
        if !ended.is_empty() {
            tracing::debug!(flows = ended.len(), "ended UDP flows of unusable backends");
        }
    }

    /// The sweeper: ends idle flows, for the life of the worker.
    ///
    /// # Cancel safety
    /// Dropping it stops idle expiry; no flow state is lost.
    pub(crate) async fn sweep(self: Rc<Self>) {
        let mut ended = Vec::new();
        loop {
            self.flows.borrow_mut().expire(Instant::now(), &mut ended);
            for (flow, _) in ended.drain(..) {
                flow.payload.ending(CloseReason::IdleTimeout);
            }
            let next = self.flows.borrow().next_check();
            self.alarm
                .sleep_until(next.map(monoio::time::Instant::from_std))
                .await;
        }
    }

    /// Reads client datagrams until the frontend closes, a batch per system call.
    async fn frontend_loop(self: Rc<Self>, frontend: Rc<UdpFrontend>, table: Arc<TableRef>) {
        let fd = frontend.socket.as_raw_fd();
        let mut received = [sock::Received::EMPTY; BATCH];
        'wait: while !frontend.closed.get() {
            if frontend.socket.readable(false).await.is_err() || frontend.closed.get() {
                break;
            }
            let mut full = 0;
            loop {
                let polled = {
                    let mut bufs = self.batch.borrow_mut();
                    let got = sock::recv_batch(
                        fd,
                        &mut frontend.headers.borrow_mut(),
                        &mut bufs,
                        &mut received,
                    );
                    match got {
                        Ok(n) => {
                            self.from_clients(&frontend, &received, 0..n, &bufs, &table);
                            Polled::Got(n)
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Polled::Empty,
                        Err(e) => {
                            tracing::debug!(frontend = %frontend.key.addr, error = %e, "UDP receive failed");
                            Polled::Failed
                        }
                    }
                };
                match polled {
                    Polled::Got(n) => {
                        if n < BATCH {
                            if let Some(c) = &self.coalesce {
                                c.after_drain(n).await;
                            }
                            // Drained: the readiness wait checks the socket's real state.
                            continue 'wait;
                        }
                        full += 1;
                        if full == ROUNDS {
                            // Let the worker's other tasks run; the wait returns at once.
                            continue 'wait;
                        }
                    }
                    Polled::Empty | Polled::Failed => continue 'wait,
                    Polled::Ended => break 'wait,
                }
            }
        }
        tracing::debug!(frontend = %frontend.key.addr, "UDP frontend closed");
    }

    /// Client datagrams `range` of a batch: each to its flow's backend, consecutive datagrams
    /// of one flow together, or opening a flow.
    fn from_clients(
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
            let found = match self.flows.borrow_mut().lookup(&key, now) {
                Lookup::Live(id) => Some(id),
                Lookup::Expired(flow) => {
                    flow.payload.ending(CloseReason::IdleTimeout);
                    None
                }
                Lookup::Missing => None,
            };
            match found {
                Some(id) => {
                    if let Some(done) = runs.push(id, i, r.len) {
                        self.flush(frontend, done, received, bufs, table);
                    }
                }
                None => {
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
        let result = self.send_run(flow.payload.upstream.as_raw_fd(), datagrams, &run);
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
                // The backend answered an earlier datagram with ICMP unreachable: end the flow
                // and balance these datagrams afresh (a new socket cannot be refused yet, so
                // this does not recurse again).
                drop(flows);
                if let Some(flow) = self.flows.borrow_mut().remove(run.to) {
                    flow.payload.ending(CloseReason::Rebalanced);
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
        fd: std::os::fd::RawFd,
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
    fn gso_failed(&self, e: &io::Error) {
        if sock::disables_gso(e) && self.gso.replace(false) {
            tracing::info!(error = %e, "UDP segmentation offload unavailable: sending datagrams one by one");
        }
    }

    /// Opens a flow for `key` with its first datagram `data`.
    fn open(
        self: &Rc<Self>,
        frontend: &Rc<UdpFrontend>,
        key: FlowKey,
        data: &[u8],
        now: Instant,
        table: &TableRef,
    ) {
        let Some(entry) = table.load().lookup(&frontend.key).cloned() else {
            return;
        };
        let stats = self.telemetry.stats(&entry);
        let limit = u64::from(entry.service.max_flows);
        if !entry.state.take_flow(limit) {
            stats.add(Count::FlowsRefused, 1);
            if let Some(n) = self.at_max_flows.hit(now) {
                tracing::warn!(service = %entry.service.name, max_flows = limit, refused = n, "UDP flow limit reached: dropping datagrams of new flows ({n} since the last warning)");
            }
            return;
        }
        // From here the flow counts against the bound; `FlowIo` (or `unwind`) releases it.
        let unwind = |dropped: bool| {
            entry.state.release_flow();
            if dropped {
                stats.add(Count::DatagramsDropped, 1);
            }
        };
        let pick = Pick {
            client: key.client,
            dest: key.local,
        };
        // A flow handed over by the process this one replaced keeps its backend while that
        // backend is still usable; otherwise the scheduler decides as for any new flow.
        let handed = self
            .handed_over
            .backend(frontend.key.addr, key.client, key.local, now)
            .and_then(|b| {
                entry
                    .backends
                    .iter()
                    .position(|x| x.address == b && x.weight > 0)
            });
        let choice = match handed {
            Some(idx) => Choice {
                backend: Some(idx),
                affinity: AffinityOutcome::Off,
            },
            None => choose_traced(&entry, &pick),
        };
        stats.affinity(choice.affinity);
        let Some(idx) = choice.backend else {
            stats.add(Count::NoBackend, 1);
            if self.telemetry.logging() {
                self.telemetry.log(Decision {
                    service: Arc::clone(&entry),
                    client: key.client,
                    frontend: key.local,
                    candidates: 0,
                    affinity: choice.affinity,
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
            return unwind(true);
        };
        let backend = entry.backends[idx].address;
        let Some(fds) = self.fds.take(1) else {
            self.refuse_for_descriptors(&entry, now, None);
            return unwind(false);
        };
        let source = entry.service.preserve_client_ip.then_some(key.client);
        let upstream = match sock::upstream_socket(backend, source).and_then(UdpSocket::from_std) {
            Ok(s) => Rc::new(s),
            Err(e) if is_exhaustion(&e) => {
                self.refuse_for_descriptors(&entry, now, Some(&e));
                return unwind(false);
            }
            Err(e) => {
                tracing::debug!(service = %entry.service.name, %backend, error = %e, "cannot open a UDP upstream socket");
                return unwind(true);
            }
        };
        let trace = self.telemetry.logging().then(|| {
            Rc::new(FlowTrace {
                telemetry: Rc::clone(&self.telemetry),
                client: key.client,
                frontend: key.local,
                backend,
                candidates: candidates(&entry),
                affinity: choice.affinity,
                opened: now,
                datagrams: Cell::default(),
                bytes: Cell::default(),
                close: Cell::new(CloseReason::Stopped),
            })
        });
        match sock::send(upstream.as_raw_fd(), data) {
            Ok(n) => {
                stats.add(Count::DatagramsToBackend, 1);
                stats.add(Count::BytesToBackend, n as u64);
                if let Some(t) = &trace {
                    t.to_backend(1, n as u64);
                }
            }
            Err(_) => stats.add(Count::DatagramsDropped, 1),
        }
        stats.add(Count::FlowsOpened, 1);
        let idle = entry.service.idle_timeout;
        let io = FlowIo {
            upstream: Rc::clone(&upstream),
            frontend: Rc::clone(frontend),
            _guard: entry.states[idx].udp_flow(),
            _fds: fds,
            service: Arc::clone(&entry),
            stats,
            trace,
        };
        let id = self.flows.borrow_mut().insert(key, backend, idle, io, now);
        self.alarm
            .wake_if_before(monoio::time::Instant::from_std(now + idle));
        let source = frontend.wildcard.then_some(key.local.ip());
        task::spawn(
            TaskKind::UdpFlow,
            Rc::clone(self).replies(id, upstream, Rc::clone(frontend), key.client, source),
        );
    }

    /// Counts a flow refused for want of a descriptor for its upstream socket (the budget is
    /// used up, or `error`: the process or the system is out of them), and warns at most every
    /// few seconds with the count since the last warning.
    fn refuse_for_descriptors(
        &self,
        entry: &ServiceEntry,
        now: Instant,
        error: Option<&io::Error>,
    ) {
        self.telemetry
            .stats(entry)
            .add(Count::FlowsNoDescriptors, 1);
        self.fds.count_refused_udp();
        if let Some(n) = self.no_descriptors.hit(now) {
            let error = error.map(ToString::to_string);
            tracing::warn!(
                service = %entry.service.name, refused = n, budget = self.fds.cap(), error,
                "out of descriptors: new UDP flows are refused ({n} since the last warning); raise the open-file limit (ulimit -n, LimitNOFILE) or lower max_flows"
            );
        }
    }

    /// Relays a flow's backend datagrams to its client until the flow ends.
    async fn replies(
        self: Rc<Self>,
        id: FlowId,
        upstream: Rc<UdpSocket>,
        frontend: Rc<UdpFrontend>,
        client: SocketAddr,
        source: Option<IpAddr>,
    ) {
        let out = frontend.socket.as_raw_fd();
        'wait: loop {
            if upstream.readable(false).await.is_err() {
                break;
            }
            let mut handled = 0;
            loop {
                if handled >= BATCH * ROUNDS {
                    // Let the worker's other tasks run; the wait returns at once.
                    continue 'wait;
                }
                match self.reply_batch(id, &upstream, out, client, source) {
                    Polled::Got(n) => {
                        handled += n;
                        if n < BATCH {
                            if let Some(c) = &self.coalesce {
                                c.after_drain(n).await;
                            }
                            // Drained: the readiness wait checks the socket's real state.
                            continue 'wait;
                        }
                    }
                    Polled::Empty | Polled::Failed => continue 'wait,
                    Polled::Ended => break 'wait,
                }
            }
        }
    }

    /// Relays the backend datagrams waiting for flow `id` (up to a batch) to its client: runs
    /// of one size leave as one UDP GSO send.
    fn reply_batch(
        &self,
        id: FlowId,
        upstream: &UdpSocket,
        out: std::os::fd::RawFd,
        client: SocketAddr,
        source: Option<IpAddr>,
    ) -> Polled {
        let mut flows = self.flows.borrow_mut();
        let Some(flow) = flows.get_mut(id) else {
            return Polled::Ended;
        };
        let mut received = [sock::Received::EMPTY; BATCH];
        let mut bufs = self.batch.borrow_mut();
        let family = usize::from(client.is_ipv6());
        let got = sock::recv_batch(
            upstream.as_raw_fd(),
            &mut self.reply_headers[family].borrow_mut(),
            &mut bufs,
            &mut received,
        );
        let n = match got {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Polled::Empty,
            Err(e) if sock::is_refused(&e) => {
                // ICMP unreachable from the backend: end the flow so the client's next
                // datagram is balanced to a live backend.
                flow.payload.ending(CloseReason::Rebalanced);
                drop(flows.remove(id));
                return Polled::Ended;
            }
            Err(e) => {
                tracing::debug!(%client, error = %e, "UDP upstream receive failed");
                return Polled::Failed;
            }
        };
        let stats = &flow.payload.stats;
        let (mut sent, mut bytes) = (0u64, 0u64);
        for run in run::split(received[..n].iter().map(|r| r.len)) {
            let mut iov = [IoSlice::new(&[]); BATCH];
            let datagrams = sock::gather(&bufs, &received, run.range(), &mut iov);
            let left = self.reply_run(out, datagrams, &run, client, source);
            sent += left as u64;
            bytes += (left * run.size) as u64;
        }
        stats.add(Count::DatagramsToClient, sent);
        stats.add(Count::BytesToClient, bytes);
        if let Some(t) = &flow.payload.trace {
            t.to_client(sent, bytes);
        }
        let lost = n as u64 - sent;
        if lost > 0 {
            stats.add(Count::DatagramsDropped, lost);
        }
        let now = Instant::now();
        flows.touch(id, now);
        if let Some(busy) = &self.busy {
            busy.activity(now);
        }
        Polled::Got(n)
    }
}

impl Udp {
    /// Sends the replies `datagrams` (the run `run`) to `client` from the frontend socket
    /// `out`: segmented when the run has several and segmentation works, else one by one.
    /// Returns how many left.
    fn reply_run(
        &self,
        out: std::os::fd::RawFd,
        datagrams: &[IoSlice<'_>],
        run: &Run<()>,
        client: SocketAddr,
        source: Option<IpAddr>,
    ) -> usize {
        if let Some(size) = run.segment().filter(|_| self.gso.get()) {
            match sock::send_to_client(out, datagrams, client, source, Some(size)) {
                Ok(_) => return run.count,
                Err(e) => self.gso_failed(&e),
            }
        }
        datagrams
            .iter()
            .filter(|d| sock::send_to_client(out, &[**d], client, source, None).is_ok())
            .count()
    }
}

/// What one non-blocking poll of a socket found.
enum Polled {
    /// This many datagrams, relayed.
    Got(usize),
    /// Nothing waiting.
    Empty,
    /// An error; wait for readiness again.
    Failed,
    /// The flow ended.
    Ended,
}

/// How a worker waits for UDP traffic: the low-latency mode, receive coalescing, or neither.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UdpWake {
    /// Busy polling for this long after traffic (`--busy-poll`).
    pub(crate) busy_poll: Option<Duration>,
    /// Receive coalescing's pause (`--udp-coalesce`); ignored while busy polling.
    pub(crate) coalesce: Option<Duration>,
}

/// The worker's view of the published table.
pub(crate) type TableRef = arc_swap::ArcSwap<Table>;
