//! UDP: a flow-tracked relay. Each client flow (client address, local address) gets its own
//! connected upstream socket to the backend the scheduler picked, keeps it for its life, and
//! ends when idle for the service's timeout or the moment its backend stops being usable.
//!
//! The flow table ([`flows`]) is pure code; this module is its I/O shell: one task per
//! frontend socket reading client datagrams, one task per flow reading the backend's replies,
//! and one sweeper per worker ending idle flows. Datagrams move with non-blocking system calls
//! after the runtime reports readiness, so a busy socket is drained many datagrams per wake-up.
//! `LIFECYCLE.md` beside this file describes a flow's states and transitions.

mod flows;
#[cfg(test)]
mod sim;
pub(crate) mod sock;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use balancers::{ConnectionGuard, Flow as Pick};
use config::{FrontendKey, ServiceEntry, Table};
use monoio::net::udp::UdpSocket;

use crate::alarm::Alarm;
use crate::connect::choose;
use crate::sys::with_socket;
use flows::{Flow, FlowId, FlowKey, FlowTable, Lookup};

/// Datagrams one task handles per wake-up before letting the worker's other tasks run.
const BATCH: usize = 64;

/// One worker's UDP state: its flows, the sweeper's alarm and the datagram buffer.
pub(crate) struct Udp {
    flows: RefCell<FlowTable<FlowIo>>,
    alarm: Alarm,
    /// One datagram in flight at a time per worker: every receive is followed by its send
    /// with no await between, so a single buffer serves every socket of the worker.
    buf: RefCell<Box<[u8]>>,
    cmsg: RefCell<Vec<u8>>,
}

/// One UDP frontend socket of this worker.
pub(crate) struct UdpFrontend {
    socket: UdpSocket,
    key: FrontendKey,
    /// Bound to `0.0.0.0` or `[::]`: the local address of a flow comes from packet info.
    wildcard: bool,
    closed: Cell<bool>,
}

impl UdpFrontend {
    /// Stops reading: shutdown(2) wakes the pending readiness wait (for an unbound UDP socket
    /// the call reports `ENOTCONN` but still wakes waiters, see `inet_shutdown`).
    pub(crate) fn close(&self) {
        self.closed.set(true);
        let _ = with_socket(&self.socket, |s| s.shutdown(std::net::Shutdown::Read));
    }
}

/// What the flow table keeps with each flow: its upstream socket and what it counts against.
pub(crate) struct FlowIo {
    upstream: Rc<UdpSocket>,
    frontend: Rc<UdpFrontend>,
    service: Arc<ServiceEntry>,
    /// Counts the flow as inactive on its backend (IPVS counts UDP as inactive).
    _guard: ConnectionGuard,
}

impl Drop for FlowIo {
    /// The flow ended: release its place in the service's bound and wake its reply task, which
    /// sees the flow gone and closes the socket.
    fn drop(&mut self) {
        self.service.counters.flows.fetch_sub(1, Relaxed);
        let _ = with_socket(&*self.upstream, |s| s.shutdown(std::net::Shutdown::Read));
    }
}

impl Udp {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            flows: RefCell::new(FlowTable::new(seed)),
            alarm: Alarm::default(),
            buf: RefCell::new(vec![0; sock::MAX_DATAGRAM].into_boxed_slice()),
            cmsg: RefCell::new(sock::cmsg_buffer()),
        }
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
        });
        monoio::spawn(Rc::clone(self).frontend_loop(Rc::clone(&frontend), table));
        Ok(frontend)
    }

    /// Ends the flows of a frontend that stopped (their replies would have no socket to leave
    /// from).
    pub(crate) fn unlisten(&self, key: &FrontendKey) {
        self.end_where(|f| f.payload.frontend.key != *key);
    }

    /// After a table swap: ends every flow whose backend is no longer usable for its frontend
    /// (removed from the service, weight 0, or the frontend left the table), so the client's
    /// next datagram is balanced again. Other flows keep their backend.
    pub(crate) fn revalidate(&self, table: &Table) {
        let mut usable: HashMap<FrontendKey, HashSet<SocketAddr>> = HashMap::new();
        self.end_where(|f| {
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
        });
    }

    /// Ends every flow (the worker stops).
    pub(crate) fn clear(&self) {
        let mut ended = Vec::new();
        self.flows.borrow_mut().clear(&mut ended);
        drop(ended);
    }

    fn end_where(&self, keep: impl FnMut(&Flow<FlowIo>) -> bool) {
        let mut ended = Vec::new();
        self.flows.borrow_mut().retain(keep, &mut ended);
        for (flow, _) in &ended {
            flow.payload
                .service
                .counters
                .flows_rebalanced
                .fetch_add(1, Relaxed);
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
                flow.payload
                    .service
                    .counters
                    .idle_timeouts
                    .fetch_add(1, Relaxed);
            }
            let next = self.flows.borrow().next_check();
            self.alarm
                .sleep_until(next.map(monoio::time::Instant::from_std))
                .await;
        }
    }

    /// Reads client datagrams until the frontend closes.
    async fn frontend_loop(self: Rc<Self>, frontend: Rc<UdpFrontend>, table: Arc<TableRef>) {
        let fd = frontend.socket.as_raw_fd();
        'wait: while !frontend.closed.get() {
            if frontend.socket.readable(false).await.is_err() || frontend.closed.get() {
                break;
            }
            for _ in 0..BATCH {
                let mut buf = self.buf.borrow_mut();
                let received = sock::recv_from_client(fd, &mut buf, &mut self.cmsg.borrow_mut());
                match received {
                    Ok(r) => self.from_client(&frontend, r, &buf[..r.len], &table),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue 'wait,
                    Err(e) => {
                        tracing::debug!(frontend = %frontend.key.addr, error = %e, "UDP receive failed");
                        continue 'wait;
                    }
                }
            }
        }
        tracing::debug!(frontend = %frontend.key.addr, "UDP frontend closed");
    }

    /// One client datagram: to its flow's backend, or opening a flow.
    fn from_client(
        self: &Rc<Self>,
        frontend: &Rc<UdpFrontend>,
        r: sock::Received,
        data: &[u8],
        table: &TableRef,
    ) {
        let local_ip = match r.dest {
            Some(ip) if frontend.wildcard => ip,
            _ => frontend.key.addr.ip(),
        };
        let key = FlowKey {
            client: r.client,
            local: SocketAddr::new(local_ip, frontend.key.addr.port()),
        };
        let now = Instant::now();
        let mut flows = self.flows.borrow_mut();
        let (id, flow) = match flows.lookup(&key, now) {
            Lookup::Live(id, flow) => (id, flow),
            Lookup::Expired(flow) => {
                flow.payload
                    .service
                    .counters
                    .idle_timeouts
                    .fetch_add(1, Relaxed);
                drop(flows);
                drop(flow);
                return self.open(frontend, key, data, now, table);
            }
            Lookup::Missing => {
                drop(flows);
                return self.open(frontend, key, data, now, table);
            }
        };
        {
            let counters = &flow.payload.service.counters;
            match sock::send(flow.payload.upstream.as_raw_fd(), data) {
                Ok(n) => {
                    counters.datagrams_to_backend.fetch_add(1, Relaxed);
                    counters.bytes_to_backend.fetch_add(n as u64, Relaxed);
                    return;
                }
                Err(e) if sock::is_refused(&e) => {
                    // The backend answered an earlier datagram with ICMP unreachable: end the
                    // flow and balance this datagram afresh.
                    counters.flows_rebalanced.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    counters.datagrams_dropped.fetch_add(1, Relaxed);
                    return;
                }
            }
            drop(flows.remove(id));
        }
        drop(flows);
        self.open(frontend, key, data, now, table);
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
        let counters = &entry.counters;
        let limit = u64::from(entry.service.max_flows);
        if counters.flows.fetch_add(1, Relaxed) >= limit {
            counters.flows.fetch_sub(1, Relaxed);
            if counters.flows_refused.fetch_add(1, Relaxed) % 1024 == 0 {
                tracing::warn!(service = %entry.service.name, max_flows = limit, "UDP flow limit reached: dropping datagrams of new flows");
            }
            return;
        }
        // From here the flow counts against the bound; `FlowIo` (or `unwind`) releases it.
        let unwind = |dropped: bool| {
            counters.flows.fetch_sub(1, Relaxed);
            if dropped {
                counters.datagrams_dropped.fetch_add(1, Relaxed);
            }
        };
        let pick = Pick {
            client: key.client,
            dest: key.local,
        };
        let Some(idx) = choose(&entry, &pick) else {
            counters.no_backend.fetch_add(1, Relaxed);
            return unwind(true);
        };
        let backend = entry.backends[idx].address;
        let upstream = match sock::upstream_socket(backend).and_then(UdpSocket::from_std) {
            Ok(s) => Rc::new(s),
            Err(e) => {
                tracing::debug!(service = %entry.service.name, %backend, error = %e, "cannot open a UDP upstream socket");
                return unwind(true);
            }
        };
        match sock::send(upstream.as_raw_fd(), data) {
            Ok(n) => {
                counters.datagrams_to_backend.fetch_add(1, Relaxed);
                counters.bytes_to_backend.fetch_add(n as u64, Relaxed);
            }
            Err(_) => {
                counters.datagrams_dropped.fetch_add(1, Relaxed);
            }
        }
        counters.flows_opened.fetch_add(1, Relaxed);
        let idle = entry.service.idle_timeout;
        let io = FlowIo {
            upstream: Rc::clone(&upstream),
            frontend: Rc::clone(frontend),
            _guard: entry.states[idx].udp_flow(),
            service: Arc::clone(&entry),
        };
        let id = self.flows.borrow_mut().insert(key, backend, idle, io, now);
        self.alarm
            .wake_if_before(monoio::time::Instant::from_std(now + idle));
        let source = frontend.wildcard.then_some(key.local.ip());
        monoio::spawn(Rc::clone(self).replies(
            id,
            upstream,
            Rc::clone(frontend),
            key.client,
            source,
        ));
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
        let fd = upstream.as_raw_fd();
        let out = frontend.socket.as_raw_fd();
        'wait: loop {
            if upstream.readable(false).await.is_err() {
                break;
            }
            for _ in 0..BATCH {
                let mut flows = self.flows.borrow_mut();
                let Some(flow) = flows.get_mut(id) else {
                    break 'wait;
                };
                let mut buf = self.buf.borrow_mut();
                match sock::recv(fd, &mut buf) {
                    Ok(n) => {
                        let counters = &flow.payload.service.counters;
                        match sock::send_to_client(out, &buf[..n], client, source) {
                            Ok(_) => {
                                counters.datagrams_to_client.fetch_add(1, Relaxed);
                                counters.bytes_to_client.fetch_add(n as u64, Relaxed);
                            }
                            Err(_) => {
                                counters.datagrams_dropped.fetch_add(1, Relaxed);
                            }
                        }
                        flows.touch(id, Instant::now());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue 'wait,
                    Err(e) if sock::is_refused(&e) => {
                        // ICMP unreachable from the backend: end the flow so the client's
                        // next datagram is balanced to a live backend.
                        flow.payload
                            .service
                            .counters
                            .flows_rebalanced
                            .fetch_add(1, Relaxed);
                        drop(flows.remove(id));
                        break 'wait;
                    }
                    Err(e) => {
                        tracing::debug!(%client, error = %e, "UDP upstream receive failed");
                        continue 'wait;
                    }
                }
            }
        }
    }
}

/// The worker's view of the published table.
pub(crate) type TableRef = arc_swap::ArcSwap<Table>;
