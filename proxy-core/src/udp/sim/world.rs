//! What the simulated worker lives in: the addresses of its clients, frontends and backend
//! pool, the payload its flows keep, the model's records, and the tally of the rules a run
//! reached.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use balancers::ConnectionGuard;
use config::{FrontendKey, Protocol};

use crate::fds::Fds;
use crate::udp::flows::FlowId;
use crate::udp::manager::{FlowPlace, Payload};

pub(super) const CLIENTS: u64 = 40;
pub(super) const SERVICES: usize = 2;
pub(super) const BACKENDS: usize = 5;

/// What the manager keeps with a simulated flow: what it was admitted with, as the shell's.
pub(super) struct SimFlow {
    pub(super) frontend: FrontendKey,
    pub(super) _place: FlowPlace,
    pub(super) _fds: Fds,
    pub(super) _load: ConnectionGuard,
}

impl Payload for SimFlow {
    fn frontend(&self) -> &FrontendKey {
        &self.frontend
    }
}

/// What the model knows of a live flow.
#[derive(Clone, Copy, Debug)]
pub(super) struct Model {
    pub(super) frontend: FrontendKey,
    pub(super) backend: SocketAddr,
    pub(super) last: Duration,
    pub(super) idle: Duration,
    pub(super) id: FlowId,
}

/// A handed-over flow, as the model keeps it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pin {
    pub(super) backend: SocketAddr,
    pub(super) until: Duration,
}

/// How often each rule was exercised, summed over seeds (a simulation that stopped reaching a
/// rule would still pass its checks).
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) opened: u64,
    pub(super) pinned: u64,
    pub(super) pin_fell_back: u64,
    pub(super) max_flows: u64,
    pub(super) no_backend: u64,
    pub(super) descriptors: u64,
    pub(super) socket: u64,
    pub(super) expired_on_datagram: u64,
    pub(super) swept: u64,
    pub(super) unusable: u64,
    pub(super) kept_across_reload: u64,
    pub(super) refused: u64,
    pub(super) frontend_closed: u64,
    pub(super) cut: u64,
}

impl Seen {
    pub(super) fn counts(&self) -> [(&'static str, u64); 14] {
        [
            ("opened", self.opened),
            ("pinned", self.pinned),
            ("pin_fell_back", self.pin_fell_back),
            ("max_flows", self.max_flows),
            ("no_backend", self.no_backend),
            ("descriptors", self.descriptors),
            ("socket", self.socket),
            ("expired_on_datagram", self.expired_on_datagram),
            ("swept", self.swept),
            ("unusable", self.unusable),
            ("kept_across_reload", self.kept_across_reload),
            ("refused", self.refused),
            ("frontend_closed", self.frontend_closed),
            ("cut", self.cut),
        ]
    }
}

pub(super) fn frontend(i: usize) -> FrontendKey {
    FrontendKey {
        protocol: Protocol::Udp,
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8 + 1)), 53),
    }
}

pub(super) fn backend(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 53)
}

pub(super) fn client(i: u64) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8)), 40_000)
}

pub(super) fn frontend_of(addr: SocketAddr) -> FrontendKey {
    FrontendKey {
        protocol: Protocol::Udp,
        addr,
    }
}
