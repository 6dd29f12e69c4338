//! UDP: a flow-tracked relay. Each client flow (client address, local address) gets its own
//! connected upstream socket to the backend the scheduler picked, keeps it for its life, and
//! ends when idle for the service's timeout or the moment its backend stops being usable.
//!
//! Every decision about flows is pure code: the flow manager ([`manager`]: admission, backend
//! selection, pins, end reasons) over the flow table ([`flows`]), and the cutting of batches
//! into segmented sends ([`run`]). This module and its `clients` and `replies` are the I/O
//! shell: one task per frontend socket reading client datagrams, one task per flow reading the
//! backend's replies, and one sweeper per worker ending idle flows. Datagrams move with
//! non-blocking system calls after the runtime reports readiness, so a busy socket is drained
//! many datagrams per wake-up. `LIFECYCLE.md` beside this file describes a flow's states and
//! transitions.

mod busy;
mod clients;
mod coalesce;
mod flow_io;
mod flows;
pub(crate) mod handover;
mod manager;
mod replies;
mod run;
#[cfg(test)]
mod sim;
pub(crate) mod sock;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use config::{FrontendKey, Table};
use monoio::net::udp::UdpSocket;

use crate::alarm::Alarm;
use crate::fds::FdBudget;
use crate::stop::{ready_or_stop, Gate, Stop};
use crate::sys::with_socket;
use crate::task::{self, TaskKind};
use crate::telemetry::WorkerTelemetry;
use crate::throttle::Throttle;
pub(crate) use busy::BusyPoll;
pub(crate) use coalesce::Coalesce;
use flow_io::FlowIo;
use flows::FlowKey;
use handover::{HandedOver, UdpFlowInfo};
use manager::{Ended, FlowManager};

/// Datagrams a reply task handles per wake-up before letting the worker's other tasks run.
const BATCH: usize = sock::BATCH;
/// Batches a frontend task receives per wake-up before letting the other tasks run.
const ROUNDS: usize = 4;
/// How long a stopping worker waits for its UDP sockets to close.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// One worker's UDP state: its flows, the sweeper's alarm and the datagram buffer.
pub(crate) struct Udp {
    flows: RefCell<FlowManager<FlowIo>>,
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
    /// Every frontend socket this worker opened, until it is dropped (and closed).
    sockets: RefCell<Vec<std::rc::Weak<UdpFrontend>>>,
    /// The data plane's share of the open-file limit (the manager takes from it; the shell
    /// counts and reports its refusals).
    fds: Arc<FdBudget>,
    /// New flows refused at a service's `max_flows`.
    at_max_flows: Throttle,
    /// New flows refused for want of descriptors.
    no_descriptors: Throttle,
    /// Opens when the frontends may read: at once, or once a predecessor's flows are pinned.
    gate: Gate,
}

/// One UDP frontend socket of this worker.
pub(crate) struct UdpFrontend {
    socket: UdpSocket,
    key: FrontendKey,
    /// Bound to `0.0.0.0` or `[::]`: the local address of a flow comes from packet info.
    wildcard: bool,
    stop: Stop,
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

    /// Stops reading for good (nobody serves the frontend after this worker): shutdown(2)
    /// wakes the pending readiness wait (for an unbound UDP socket the call reports
    /// `ENOTCONN` but still wakes waiters, see `inet_shutdown`).
    pub(crate) fn close(&self) {
        self.stop.close();
        let _ = with_socket(&self.socket, |s| s.shutdown(std::net::Shutdown::Read));
    }

    /// Stops reading and leaves the socket, and the datagrams queued on it, to the successor
    /// process that shares it.
    pub(crate) fn hand_over(&self) {
        self.stop.stop();
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
            flows: RefCell::new(FlowManager::new(seed, handed_over, Arc::clone(&fds))),
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
            sockets: RefCell::new(Vec::new()),
            fds,
            at_max_flows: Throttle::default(),
            no_descriptors: Throttle::default(),
            gate: Gate::new(!wake.held),
        }
    }

    /// The frontends may read from now on (see [`UdpWake::held`]).
    pub(crate) fn open_gate(&self) {
        self.gate.open();
    }

    /// How long every flow has been without a datagram at `now` (all the time there is when
    /// none is open).
    pub(crate) fn quiet_for(&self, now: Instant) -> Duration {
        self.flows
            .borrow()
            .iter()
            .map(|f| f.idle_for(now))
            .min()
            .unwrap_or(Duration::MAX)
    }

    /// This worker's live flows at `now`, for listing and for a successor process.
    pub(crate) fn flows(&self, now: Instant) -> Vec<UdpFlowInfo> {
        self.flows
            .borrow()
            .iter()
            .map(|f| UdpFlowInfo {
                service: f.payload.service().service.name.clone(),
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
            stop: Stop::default(),
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
        let mut ended = Vec::new();
        self.flows.borrow_mut().frontend_closed(key, &mut ended);
        end(&mut ended);
    }

    /// After a table swap: ends every flow whose backend is no longer usable for its frontend
    /// (removed from the service, weight 0, or the frontend left the table), so the client's
    /// next datagram is balanced again. Other flows keep their backend.
    pub(crate) fn revalidate(&self, table: &Table) {
        let mut ended = Vec::new();
        self.flows.borrow_mut().revalidate(table, &mut ended);
        if !ended.is_empty() {
            tracing::debug!(flows = ended.len(), "ended UDP flows of unusable backends");
        }
        end(&mut ended);
    }

    /// Ends the flows to the backend whose state is `backend` (marked down, its sessions
    /// shut).
    pub(crate) fn end_flows_to(&self, table: &Table, backend: *const balancers::BackendState) {
        let mut ended = Vec::new();
        self.flows
            .borrow_mut()
            .end_flows_to(table, backend, &mut ended);
        end(&mut ended);
    }

    /// Ends every flow (the worker stops).
    pub(crate) fn clear(&self) {
        let mut ended = Vec::new();
        self.flows.borrow_mut().clear(&mut ended);
        end(&mut ended);
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

    /// The sweeper: ends idle flows, for the life of the worker.
    ///
    /// # Cancel safety
    /// Dropping it stops idle expiry; no flow state is lost.
    pub(crate) async fn sweep(self: Rc<Self>) {
        let mut ended = Vec::new();
        loop {
            self.flows.borrow_mut().expire(Instant::now(), &mut ended);
            end(&mut ended);
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
        if ready_or_stop(self.gate.opened(), &frontend.stop)
            .await
            .is_none()
        {
            return;
        }
        'wait: while !frontend.stop.is_stopped() {
            let ready = ready_or_stop(frontend.socket.readable(false), &frontend.stop).await;
            if !matches!(ready, Some(Ok(()))) || frontend.stop.is_stopped() {
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
}

/// Ends the flows in `ended` (emptying it): each records why, then its payload is dropped,
/// which gives back what it held and wakes its reply task. Called with the flows no longer
/// borrowed.
fn end(ended: &mut Vec<Ended<FlowIo>>) {
    for (flow, why) in ended.drain(..) {
        flow.payload.ending(why);
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
    /// The frontends read nothing until the control plane opens them (a successor process
    /// first takes its predecessor's flows, so their clients keep their backends).
    pub(crate) held: bool,
}

/// The worker's view of the published table.
pub(crate) type TableRef = arc_swap::ArcSwap<Table>;
