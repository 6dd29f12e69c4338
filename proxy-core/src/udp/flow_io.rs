//! What the flow table keeps with each UDP flow ([`FlowIo`]): its upstream socket, what it
//! counts against, and its line of the decision log in the making ([`FlowTrace`]). Dropping
//! it is the flow's end.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use balancers::ConnectionGuard;
use config::ServiceEntry;
use monoio::net::udp::UdpSocket;

use super::UdpFrontend;
use crate::fds::Fds;
use crate::sys::with_socket;
use crate::telemetry::{
    AffinityOutcome, CloseReason, Count, Datagrams, Decision, ServiceStats, WorkerTelemetry,
};

/// What the flow table keeps with each flow: its upstream socket and what it counts against.
pub(crate) struct FlowIo {
    pub(super) upstream: Rc<UdpSocket>,
    pub(super) frontend: Rc<UdpFrontend>,
    pub(super) service: Arc<ServiceEntry>,
    /// This worker's counts of the service.
    pub(super) stats: Arc<ServiceStats>,
    /// Counts the flow as inactive on its backend (IPVS counts UDP as inactive).
    pub(super) _guard: ConnectionGuard,
    /// The descriptor of its upstream socket, in the data plane's budget.
    pub(super) _fds: Fds,
    /// What the decision log needs, kept only while the log is on.
    pub(super) trace: Option<Rc<FlowTrace>>,
}

/// A flow's line of the decision log in the making: its placement, its traffic and, once it
/// ends, why. Written when the flow's payload is dropped.
pub(super) struct FlowTrace {
    pub(super) telemetry: Rc<WorkerTelemetry>,
    pub(super) client: SocketAddr,
    pub(super) frontend: SocketAddr,
    pub(super) backend: SocketAddr,
    pub(super) candidates: u32,
    pub(super) affinity: AffinityOutcome,
    pub(super) opened: Instant,
    pub(super) datagrams: Cell<Datagrams>,
    pub(super) bytes: Cell<(u64, u64)>,
    pub(super) close: Cell<CloseReason>,
}

impl FlowTrace {
    pub(super) fn to_backend(&self, datagrams: u64, bytes: u64) {
        let mut d = self.datagrams.get();
        d.to_backend += datagrams;
        self.datagrams.set(d);
        let (b, c) = self.bytes.get();
        self.bytes.set((b + bytes, c));
    }

    pub(super) fn to_client(&self, datagrams: u64, bytes: u64) {
        let mut d = self.datagrams.get();
        d.to_client += datagrams;
        self.datagrams.set(d);
        let (b, c) = self.bytes.get();
        self.bytes.set((b, c + bytes));
    }
}

impl FlowIo {
    /// Records why the flow ends: in its service's counts (idle timeouts, re-balanced flows)
    /// and for the decision log.
    pub(super) fn ending(&self, why: CloseReason) {
        match why {
            CloseReason::IdleTimeout => self.stats.add(Count::IdleTimeouts, 1),
            CloseReason::Rebalanced => self.stats.add(Count::FlowsRebalanced, 1),
            _ => {}
        }
        if let Some(t) = &self.trace {
            t.close.set(why);
        }
    }
}

impl Drop for FlowIo {
    /// The flow ended: release its place in the service's bound and wake its reply task, which
    /// sees the flow gone and closes the socket.
    fn drop(&mut self) {
        self.service.state.release_flow();
        let _ = with_socket(&*self.upstream, |s| s.shutdown(std::net::Shutdown::Read));
        if let Some(t) = &self.trace {
            if t.telemetry.logging() {
                let (bytes_to_backend, bytes_to_client) = t.bytes.get();
                t.telemetry.log(Decision {
                    service: Arc::clone(&self.service),
                    client: t.client,
                    frontend: t.frontend,
                    candidates: t.candidates,
                    affinity: t.affinity,
                    backend: Some(t.backend),
                    attempts: 1,
                    bytes_to_backend,
                    bytes_to_client,
                    datagrams: Some(t.datagrams.get()),
                    duration: t.opened.elapsed(),
                    ended: std::time::SystemTime::now(),
                    close: t.close.get(),
                });
            }
        }
    }
}
