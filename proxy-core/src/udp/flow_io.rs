//! What the flow table keeps with each UDP flow ([`FlowIo`]): its upstream socket, what it
//! holds against node-wide state (as the manager admitted it), its worker's counts of its
//! service, and its line of the decision log in the making ([`FlowTrace`]). Dropping it is the
//! flow's end.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use balancers::ConnectionGuard;
use config::{FrontendKey, ServiceEntry};
use monoio::net::udp::UdpSocket;

use super::flows::End;
use super::manager::{FlowPlace, Payload};
use super::UdpFrontend;
use crate::fds::Fds;
use crate::sys::with_socket;
use crate::telemetry::{
    AffinityOutcome, CloseReason, Datagrams, Decision, ServiceStats, WorkerTelemetry,
};

/// What the flow table keeps with each flow: its upstream socket and what it counts against.
pub(crate) struct FlowIo {
    pub(super) upstream: Rc<UdpSocket>,
    pub(super) frontend: Rc<UdpFrontend>,
    /// Its place under the service's `max_flows`, with the service's entry.
    pub(super) place: FlowPlace,
    /// This worker's counts of the service.
    pub(super) stats: Arc<ServiceStats>,
    /// Counts the flow as inactive on its backend (IPVS counts UDP as inactive).
    pub(super) _load: ConnectionGuard,
    /// The descriptor of its upstream socket, in the data plane's budget.
    pub(super) _fds: Fds,
    /// What the decision log needs, kept only while the log is on.
    pub(super) trace: Option<Rc<FlowTrace>>,
    /// The PROXY protocol v2 header that starts every datagram to the backend, when the
    /// service sends one.
    pub(super) header: Option<Box<[u8]>>,
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
    /// The flow's service.
    pub(super) fn service(&self) -> &Arc<ServiceEntry> {
        self.place.entry()
    }

    /// Records why the flow ends, as the manager said: in its service's counts (idle timeouts,
    /// re-balanced flows) and for the decision log.
    pub(super) fn ending(&self, why: End) {
        if let Some(count) = why.count() {
            self.stats.add(count, 1);
        }
        if let Some(t) = &self.trace {
            t.close.set(why.close_reason());
        }
    }
}

impl Payload for FlowIo {
    fn frontend(&self) -> &FrontendKey {
        &self.frontend.key
    }
}

impl Drop for FlowIo {
    /// The flow ended: wake its reply task, which sees the flow gone and closes the socket.
    /// Its place in the service's bound, its descriptor and its backend's count are given back
    /// as its fields drop.
    fn drop(&mut self) {
        let _ = with_socket(&*self.upstream, |s| s.shutdown(std::net::Shutdown::Read));
        if let Some(t) = &self.trace {
            if t.telemetry.logging() {
                let (bytes_to_backend, bytes_to_client) = t.bytes.get();
                t.telemetry.log(Decision {
                    service: Arc::clone(self.service()),
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
